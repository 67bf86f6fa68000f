//! The real kubectl (1.32, `/usr/bin/kubectl` on this machine) against the emulator, over
//! plain HTTP on 127.0.0.1, with an empty kubeconfig and a private cache directory.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use super::{GW, gateway, start};

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    server: String,
    dir: PathBuf,
}

impl Kubectl {
    fn new(server: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "peerd-kubectl-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kubeconfig"), "").unwrap();
        Self {
            server: server.to_string(),
            dir,
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(KUBECTL)
            .arg(format!("--server={}", self.server))
            .arg(format!("--cache-dir={}", self.dir.join("cache").display()))
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("HOME", &self.dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const WORKLOAD_ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: autogenflat.c2.default.pod1.f2396f15c5c2
  namespace: istio-system
  labels:
    app.kubernetes.io/managed-by: peerd
    solo.io/source-cluster: c2
spec:
  address: 10.20.0.7
  network: net2
";

const WE_NAME: &str = "autogenflat.c2.default.pod1.f2396f15c5c2";

#[tokio::test]
async fn real_kubectl_lists_applies_and_round_trips() {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for this test (kubectl 1.32 is installed on the development machines)"
    );
    let (emu, client) = start().await;
    let kubectl = Kubectl::new(emu.url());

    // Listing an empty namespace works (discovery, then a Table list).
    let empty = kubectl
        .run(&[
            "get",
            "workloadentries.networking.istio.io",
            "-n",
            "istio-system",
        ])
        .await;
    assert!(
        empty.status.success(),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    assert!(
        String::from_utf8_lossy(&empty.stderr)
            .contains("No resources found in istio-system namespace")
    );

    // Gateways across namespaces.
    client.post(GW, &gateway("cluster-2")).await;
    let mut other = gateway("edge");
    other["metadata"]["namespace"] = json!("default");
    client
        .post(
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
            &other,
        )
        .await;
    let gateways = kubectl.ok(&["get", "gateways", "-A"]).await;
    let lines: Vec<&str> = gateways.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE") && lines[0].contains("CLASS"),
        "{gateways}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("default") && l.contains("edge")),
        "{gateways}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("istio-system")
            && l.contains("cluster-2")
            && l.contains("istio-remote")),
        "{gateways}"
    );

    // Server-side apply of a WorkloadEntry.
    let manifest = kubectl.file("we.yaml", WORKLOAD_ENTRY);
    let applied = kubectl
        .ok(&["apply", "--server-side", "-f", &manifest])
        .await;
    assert!(
        applied.contains(&format!(
            "workloadentry.networking.istio.io/{WE_NAME} serverside-applied"
        )),
        "{applied}"
    );
    let stored = emu
        .object(
            "networking.istio.io",
            "workloadentries",
            "istio-system",
            WE_NAME,
        )
        .unwrap();
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(stored["metadata"]["managedFields"][0]["operation"], "Apply");
    let listed = kubectl
        .ok(&[
            "get",
            "workloadentries.networking.istio.io",
            "-n",
            "istio-system",
        ])
        .await;
    assert!(
        listed.contains(WE_NAME) && listed.contains("10.20.0.7"),
        "{listed}"
    );

    // Re-applying the same manifest writes nothing.
    emu.reset_counters();
    kubectl
        .ok(&["apply", "--server-side", "-f", &manifest])
        .await;
    let after = emu
        .object(
            "networking.istio.io",
            "workloadentries",
            "istio-system",
            WE_NAME,
        )
        .unwrap();
    assert_eq!(
        after["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!(emu.counters().writes(), 1, "one apply request, no change");

    // A second manager changing the address conflicts, naming kubectl.
    let conflicting = kubectl.file(
        "we2.yaml",
        &WORKLOAD_ENTRY.replace("10.20.0.7", "10.20.0.8"),
    );
    let conflict = kubectl
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &conflicting,
        ])
        .await;
    assert!(!conflict.status.success());
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("conflict with \"kubectl\"") && stderr.contains(".spec.address"),
        "{stderr}"
    );

    // get -o json round trip: the JSON is the stored object (without managedFields), and
    // replacing with it is accepted; a stale copy is refused.
    let json_text = kubectl
        .ok(&["get", "we", WE_NAME, "-n", "istio-system", "-o", "json"])
        .await;
    let got: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(got["apiVersion"], "networking.istio.io/v1");
    assert_eq!(got["spec"], stored["spec"]);
    assert_eq!(got["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(got["metadata"]["labels"]["solo.io/source-cluster"], "c2");
    let mut edited = got.clone();
    edited["metadata"]["labels"]["edited"] = json!("yes");
    let edited_path = kubectl.file("edited.json", &edited.to_string());
    kubectl.ok(&["replace", "-f", &edited_path]).await;
    let replaced = emu
        .object(
            "networking.istio.io",
            "workloadentries",
            "istio-system",
            WE_NAME,
        )
        .unwrap();
    assert_eq!(replaced["metadata"]["labels"]["edited"], "yes");
    let stale = kubectl.run(&["replace", "-f", &edited_path]).await;
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("the object has been modified"));

    // The handle's kubeconfig works on its own (default namespace istio-system).
    let kubeconfig = kubectl.file("emulator.kubeconfig", &emu.kubeconfig("istio-system"));
    let via_config = tokio::process::Command::new(KUBECTL)
        .args(["--kubeconfig", &kubeconfig, "get", "gateways", "-o", "name"])
        .env("HOME", &kubectl.dir)
        .output()
        .await
        .unwrap();
    assert!(
        via_config.status.success(),
        "{}",
        String::from_utf8_lossy(&via_config.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&via_config.stdout).trim(),
        "gateway.gateway.networking.k8s.io/cluster-2"
    );

    // Status patch and delete.
    kubectl
        .ok(&["patch", "gateway", "cluster-2", "-n", "istio-system", "--subresource=status", "--type=merge", "-p", r#"{"status":{"conditions":[{"type":"Programmed","status":"True","reason":"Programmed","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#])
        .await;
    let programmed = kubectl.ok(&["get", "gateways", "-n", "istio-system"]).await;
    assert!(
        programmed
            .lines()
            .any(|l| l.contains("cluster-2") && l.contains("True")),
        "{programmed}"
    );
    let deleted = kubectl
        .ok(&["delete", "we", WE_NAME, "-n", "istio-system"])
        .await;
    assert!(deleted.contains("deleted"), "{deleted}");
    let all: Value = serde_json::from_str(
        &kubectl
            .ok(&["get", "workloadentries", "-A", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(all["items"], json!([]));
}
