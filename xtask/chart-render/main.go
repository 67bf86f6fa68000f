// chart-render renders a Helm chart with the engine Helm itself uses: Go's text/template,
// the sprig function library and Helm's own functions, so `cargo xtask chart` checks the
// chart against the real template language rather than an imitation of it.
//
// It is built by `cargo xtask chart` offline from Debian's Go packages (GOPATH mode, see
// xtask/src/chart/render.rs) and prints one JSON object on stdout: template name (as Helm
// names it, e.g. "peerd/templates/daemonset.yaml") to rendered text. Partials (`_*.tpl`)
// are parsed but not rendered, like Helm. NOTES.txt is rendered (so it is checked too).
//
// What it mirrors from Helm 3 (pkg/engine, pkg/chartutil):
//   - the function map: sprig's TxtFuncMap without `env`/`expandenv`, plus Helm's
//     `include`, `tpl`, `required`, `toYaml`, `fromYaml`, `fromYamlArray`, `toJson`,
//     `fromJson`, `fromJsonArray` (`fail` comes from sprig). Not provided: `toToml` (no
//     TOML library among the Debian packages used) and `lookup` (needs a cluster; `helm
//     template` stubs it): a template calling them fails to parse with a clear error.
//   - the data: `.Values` (values.yaml, then the override file coalesced over it: maps
//     merge, null deletes a key, anything else replaces; numbers are float64 as in Helm),
//     `.Release` (Name, Namespace, Service "Helm", IsInstall, IsUpgrade, Revision 1),
//     `.Chart` (Chart.yaml's fields under Helm's capitalised names), `.Capabilities`
//     (KubeVersion only, from -kube-version), `.Template` (Name, BasePath) and `.Files`
//     (Get, GetBytes: files outside templates/, minus .helmignore'd names).
//   - Chart.yaml's `kubeVersion` constraint is checked against -kube-version.
//   - `missingkey=zero` and "<no value>" removed, or with -strict `missingkey=error`
//     (`helm lint --strict`).
//
// It never reads outside the chart directory and the override file, and never writes
// anything but its output.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"
)

// Same bound as Helm's include recursion guard.
const recursionMaxNums = 1000

// Metadata is the part of Chart.yaml templates can read as `.Chart`, with Helm's names.
type Metadata struct {
	Name        string            `json:"name"`
	Home        string            `json:"home,omitempty"`
	Sources     []string          `json:"sources,omitempty"`
	Version     string            `json:"version"`
	Description string            `json:"description,omitempty"`
	Keywords    []string          `json:"keywords,omitempty"`
	Icon        string            `json:"icon,omitempty"`
	APIVersion  string            `json:"apiVersion"`
	Condition   string            `json:"condition,omitempty"`
	Tags        string            `json:"tags,omitempty"`
	AppVersion  string            `json:"appVersion,omitempty"`
	Deprecated  bool              `json:"deprecated,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	KubeVersion string            `json:"kubeVersion,omitempty"`
	Type        string            `json:"type,omitempty"`
}

// Release is `.Release` as `helm template` sets it.
type Release struct {
	Name      string
	Namespace string
	IsUpgrade bool
	IsInstall bool
	Revision  int
	Service   string
}

// KubeVersion is `.Capabilities.KubeVersion`.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k KubeVersion) String() string { return k.Version }

// GitVersion is the deprecated alias Helm keeps.
func (k KubeVersion) GitVersion() string { return k.Version }

// Capabilities is `.Capabilities`; only the Kubernetes version is modelled.
type Capabilities struct {
	KubeVersion KubeVersion
}

// Files is `.Files`: the chart's non-template files by slash path.
type Files map[string][]byte

// Get returns a file's content, or "" when it does not exist (as Helm does).
func (f Files) Get(name string) string { return string(f.GetBytes(name)) }

// GetBytes returns a file's content, or nil when it does not exist.
func (f Files) GetBytes(name string) []byte { return f[name] }

func main() {
	chartDir := flag.String("chart", "", "chart directory (with Chart.yaml)")
	valuesFile := flag.String("f", "", "values file coalesced over values.yaml ('-' = stdin)")
	releaseName := flag.String("release", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "1.32.0", "Kubernetes version for .Capabilities and kubeVersion")
	strict := flag.Bool("strict", false, "fail on a missing map key (helm lint --strict)")
	flag.Parse()
	if *chartDir == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: chart-render -chart DIR [-f VALUES] [-release NAME] [-namespace NS] [-kube-version V] [-strict]")
		os.Exit(2)
	}
	out, err := render(*chartDir, *valuesFile, *releaseName, *namespace, *kubeVersion, *strict)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chart-render: %v\n", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "chart-render: writing output: %v\n", err)
		os.Exit(1)
	}
}

func render(chartDir, valuesFile, releaseName, namespace, kubeVersion string, strict bool) (map[string]string, error) {
	var meta Metadata
	if err := readYAML(filepath.Join(chartDir, "Chart.yaml"), &meta); err != nil {
		return nil, err
	}
	if meta.Name == "" {
		return nil, errors.New("Chart.yaml: name is required")
	}
	caps, err := capabilities(kubeVersion)
	if err != nil {
		return nil, err
	}
	if meta.KubeVersion != "" {
		ok, err := compatible(meta.KubeVersion, kubeVersion)
		if err != nil {
			return nil, fmt.Errorf("Chart.yaml: kubeVersion %q: %w", meta.KubeVersion, err)
		}
		if !ok {
			return nil, fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes v%s", meta.KubeVersion, kubeVersion)
		}
	}

	values := map[string]interface{}{}
	if err := readYAML(filepath.Join(chartDir, "values.yaml"), &values); err != nil {
		return nil, err
	}
	if valuesFile != "" {
		user, err := readOverrides(valuesFile)
		if err != nil {
			return nil, err
		}
		coalesce(values, user)
	}

	templates, files, err := loadChart(chartDir, meta.Name)
	if err != nil {
		return nil, err
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": Release{
			Name: releaseName, Namespace: namespace, IsInstall: true, Revision: 1, Service: "Helm",
		},
		"Chart":        meta,
		"Capabilities": caps,
		"Files":        files,
	}
	return renderTemplates(templates, top, strict)
}

func readYAML(file string, into interface{}) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("parsing %s: %w", file, err)
	}
	return nil
}

func readOverrides(file string) (map[string]interface{}, error) {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("reading values %s: %w", file, err)
	}
	user := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &user); err != nil {
		return nil, fmt.Errorf("parsing values %s: %w", file, err)
	}
	return user, nil
}

// coalesce overlays user values on the chart's, as Helm does for `-f`: maps merge
// recursively, a null removes the key, anything else replaces.
func coalesce(dst, src map[string]interface{}) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sub, isMap := v.(map[string]interface{})
		have, haveMap := dst[k].(map[string]interface{})
		if isMap && haveMap {
			coalesce(have, sub)
		} else {
			dst[k] = v
		}
	}
}

func capabilities(version string) (Capabilities, error) {
	v, err := semver.NewVersion(version)
	if err != nil {
		return Capabilities{}, fmt.Errorf("-kube-version %q: %w", version, err)
	}
	return Capabilities{KubeVersion: KubeVersion{
		Version: "v" + v.String(),
		Major:   fmt.Sprint(v.Major()),
		Minor:   fmt.Sprint(v.Minor()),
	}}, nil
}

// compatible is Helm's chartutil.IsCompatibleRange.
func compatible(constraint, version string) (bool, error) {
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return false, err
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return false, err
	}
	return c.Check(v), nil
}

// loadChart reads templates/ (template name "<chart>/templates/<path>") and the other
// files (`.Files`), skipping what .helmignore names and the files Helm gives meaning to.
func loadChart(chartDir, chartName string) (map[string]string, Files, error) {
	ignored, err := helmignore(filepath.Join(chartDir, ".helmignore"))
	if err != nil {
		return nil, nil, err
	}
	templates := map[string]string{}
	files := Files{}
	err = filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(chartDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignored(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if rel == "charts" {
				return fmt.Errorf("%s: subcharts are not supported", p)
			}
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			templates[chartName+"/"+rel] = string(data)
		case rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json" || rel == "Chart.lock" || rel == "requirements.yaml" || rel == "requirements.lock":
		default:
			files[rel] = data
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("loading chart %s: %w", chartDir, err)
	}
	if len(templates) == 0 {
		return nil, nil, fmt.Errorf("chart %s has no templates", chartDir)
	}
	return templates, files, nil
}

// helmignore reads .helmignore's patterns. Supported: blank lines, `#` comments and
// glob patterns matched against a file's base name or its whole relative path (what the
// chart's .helmignore uses); negation (`!`) and `**` are refused rather than misread.
func helmignore(file string) (func(string) bool, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return func(string) bool { return false }, nil
	}
	if err != nil {
		return nil, err
	}
	var patterns []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") || strings.Contains(line, "**") {
			return nil, fmt.Errorf("%s:%d: pattern %q is not supported by chart-render", file, i+1, line)
		}
		line = strings.TrimSuffix(strings.TrimPrefix(line, "/"), "/")
		if _, err := path.Match(line, ""); err != nil {
			return nil, fmt.Errorf("%s:%d: bad pattern %q: %w", file, i+1, line, err)
		}
		patterns = append(patterns, line)
	}
	return func(rel string) bool {
		for _, p := range patterns {
			if m, _ := path.Match(p, path.Base(rel)); m {
				return true
			}
			if m, _ := path.Match(p, rel); m {
				return true
			}
		}
		return false
	}, nil
}

// renderTemplates is Helm's Engine.render: one template set holding every file, parsed
// in Helm's order (deepest path first, then name, descending), each non-partial executed
// with its own `.Template`.
func renderTemplates(tpls map[string]string, top map[string]interface{}, strict bool) (map[string]string, error) {
	t := template.New("gotpl")
	if strict {
		t.Option("missingkey=error")
	} else {
		t.Option("missingkey=zero")
	}
	includedNames := map[string]int{}
	funcs := funcMap()
	funcs["include"] = includeFun(t, includedNames)
	funcs["tpl"] = tplFun(t, includedNames, strict)
	t.Funcs(funcs)

	names := make([]string, 0, len(tpls))
	for name := range tpls {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool {
		ci, cj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if ci == cj {
			return names[i] > names[j]
		}
		return ci > cj
	})
	for _, name := range names {
		if _, err := t.New(name).Parse(tpls[name]); err != nil {
			return nil, fmt.Errorf("parse error: %w", err)
		}
	}
	rendered := map[string]string{}
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{
			"Name":     name,
			"BasePath": path.Join(strings.SplitN(name, "/", 2)[0], "templates"),
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, vals); err != nil {
			return nil, fmt.Errorf("render error: %w", err)
		}
		rendered[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return rendered, nil
}

// funcMap is Helm's: sprig minus environment access, plus the serialisation helpers.
// `include`, `tpl` and `required` are bound per render.
func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"required":      required,
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

func includeFun(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("unable to execute template: rendering template has a nested reference name: %s", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

func tplFun(parent *template.Template, includedNames map[string]int, strict bool) func(string, interface{}) (string, error) {
	return func(tpl string, vals interface{}) (string, error) {
		t, err := parent.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %w", err)
		}
		if strict {
			t.Option("missingkey=error")
		} else {
			t.Option("missingkey=zero")
		}
		t.Funcs(template.FuncMap{
			"include": includeFun(t, includedNames),
			"tpl":     tplFun(t, includedNames, strict),
		})
		t, err = t.New(parent.Name()).Parse(tpl)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}

func required(warn string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(warn)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, errors.New(warn)
	}
	return val, nil
}

// toYAML swallows errors into "" inside a template, as Helm does.
func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := make(map[string]interface{})
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}
