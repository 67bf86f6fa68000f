"""Validates rendered Kubernetes objects (a JSON list on stdin) against the Kubernetes
OpenAPI schemas of one version (kubernetes-validate, strict: unknown fields are errors),
and CRD kinds against the small JSON schemas in deploy/schemas/ (argv[2]).
Prints one line per object; exits 1 if any object is invalid. Run by `cargo xtask chart`."""

import json
import os
import sys

import jsonschema
import kubernetes_validate

version = sys.argv[1]
schema_dir = sys.argv[2]
custom = {}
for name in os.listdir(schema_dir):
    if name.endswith(".json"):
        with open(os.path.join(schema_dir, name)) as f:
            schema = json.load(f)
        custom[(schema["x-apiVersion"], schema["x-kind"])] = schema

failed = 0
for source, obj in json.load(sys.stdin):
    what = f"{source}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    key = (obj.get("apiVersion"), obj.get("kind"))
    try:
        if key in custom:
            jsonschema.validate(obj, custom[key])
            print(f"ok   {what} (deploy/schemas)")
        else:
            kubernetes_validate.validate(obj, version, strict=True)
            print(f"ok   {what} (Kubernetes {version})")
    except kubernetes_validate.SchemaNotFoundError:
        failed += 1
        print(f"FAIL {what}: no schema for {key} (add one to deploy/schemas/)")
    except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
        failed += 1
        path = "/".join(str(p) for p in e.absolute_path)
        print(f"FAIL {what}: at /{path}: {e.message}")
sys.exit(1 if failed else 0)
