//! `clustermesh manifests` and `terraform/modules/clustermesh` must set a cluster up the same
//! way. Terraform's values are mostly expressions over locals, so this compares what both
//! spell out literally: the containers' environment variable names and flags, the volume and
//! port names, and the apiserver's RBAC rules. (It needs neither Terraform nor its providers:
//! the module is parsed with hcl-rs.)

use std::collections::BTreeSet;
use std::path::Path;

use hcl::expr::{Expression, TemplateExpr};
use hcl::{Block, Body};
use serde_json::Value;

fn module() -> Body {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform/modules/clustermesh");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
            text.push('\n');
        }
    }
    hcl::parse(&text).unwrap()
}

fn rendered() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clustermesh"))
        .args(["manifests", "--cluster-name", "east", "--cluster-id", "1"])
        .env("KUBECONFIG", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn resource<'a>(body: &'a Body, kind: &str, name: &str) -> &'a Body {
    body.blocks()
        .find(|b| {
            b.identifier() == "resource"
                && b.labels().first().map(|l| l.as_str()) == Some(kind)
                && b.labels().get(1).map(|l| l.as_str()) == Some(name)
        })
        .unwrap_or_else(|| panic!("no resource {kind}.{name} in the module"))
        .body()
}

fn blocks<'a>(body: &'a Body, name: &'a str) -> impl Iterator<Item = &'a Block> {
    body.blocks().filter(move |b| b.identifier() == name)
}

fn block<'a>(body: &'a Body, path: &[&'a str]) -> &'a Body {
    path.iter().fold(body, |b, name| {
        blocks(b, name)
            .next()
            .unwrap_or_else(|| panic!("no block {name}"))
            .body()
    })
}

fn literal(expr: &Expression) -> Option<String> {
    match expr {
        Expression::String(s) => Some(s.clone()),
        Expression::Number(n) => Some(n.to_string()),
        Expression::TemplateExpr(t) => match t.as_ref() {
            TemplateExpr::QuotedString(s) => Some(s.clone()),
            TemplateExpr::Heredoc(h) => Some(h.template.clone()),
        },
        _ => None,
    }
}

fn attr(body: &Body, key: &str) -> Option<String> {
    body.attributes()
        .find(|a| a.key() == key)
        .and_then(|a| literal(a.expr()))
}

fn list(body: &Body, key: &str) -> Vec<String> {
    match body.attributes().find(|a| a.key() == key).map(|a| a.expr()) {
        Some(Expression::Array(items)) => items.iter().filter_map(literal).collect(),
        _ => vec![],
    }
}

fn names_of<'a>(body: &'a Body, block_name: &'a str) -> BTreeSet<String> {
    blocks(body, block_name)
        .filter_map(|b| attr(b.body(), "name"))
        .collect()
}

fn json_names(values: &Value) -> BTreeSet<String> {
    values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect()
}

fn flag(arg: &str) -> String {
    arg.split('=').next().unwrap_or_default().to_owned()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("manifests has no {kind} {name}"))
}

#[test]
fn the_module_and_the_cli_configure_the_same_containers() {
    let tf = module();
    let cli = rendered();

    // The agent: environment, volumes, mounts.
    let agent_tf = block(
        resource(&tf, "kubernetes_daemon_set_v1", "agent"),
        &["spec", "template", "spec"],
    );
    let container_tf = block(agent_tf, &["container"]);
    let agent_cli = &object(&cli, "DaemonSet", "clustermesh-agent")["spec"]["template"]["spec"];
    let container_cli = &agent_cli["containers"][0];
    assert_eq!(
        names_of(container_tf, "env"),
        json_names(&container_cli["env"]),
        "agent environment"
    );
    assert_eq!(
        names_of(agent_tf, "volume"),
        json_names(&agent_cli["volumes"]),
        "agent volumes"
    );
    assert_eq!(
        names_of(container_tf, "volume_mount"),
        json_names(&container_cli["volumeMounts"]),
        "agent mounts"
    );
    // Same probes, same timing (a startup probe gates liveness while the certificate bootstrap
    // waits for the issuer).
    for (tf_name, cli_name) in [
        ("readiness_probe", "readinessProbe"),
        ("liveness_probe", "livenessProbe"),
        ("startup_probe", "startupProbe"),
    ] {
        let probe_tf = block(container_tf, &[tf_name]);
        let probe_cli = &container_cli[cli_name];
        for (tf_key, cli_key) in [
            ("period_seconds", "periodSeconds"),
            ("failure_threshold", "failureThreshold"),
            ("initial_delay_seconds", "initialDelaySeconds"),
        ] {
            assert_eq!(
                attr(probe_tf, tf_key),
                probe_cli.get(cli_key).map(|v| v.to_string()),
                "agent {tf_name}.{tf_key}"
            );
        }
        assert_eq!(
            attr(block(probe_tf, &["http_get"]), "path"),
            probe_cli["httpGet"]["path"].as_str().map(str::to_owned),
            "agent {tf_name} path"
        );
    }

    // The apiserver: flags, volumes, mounts, ports.
    let apiserver_tf = block(
        resource(&tf, "kubernetes_deployment_v1", "apiserver"),
        &["spec", "template", "spec"],
    );
    let apiserver_container_tf = blocks(apiserver_tf, "container")
        .find(|c| attr(c.body(), "name").as_deref() == Some("apiserver"))
        .unwrap()
        .body();
    let apiserver_cli =
        &object(&cli, "Deployment", "clustermesh-apiserver")["spec"]["template"]["spec"];
    let apiserver_container_cli = apiserver_cli["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "apiserver")
        .unwrap();
    let flags_tf: BTreeSet<String> = list(apiserver_container_tf, "args")
        .iter()
        .map(|a| flag(a))
        .collect();
    let flags_cli: BTreeSet<String> = apiserver_container_cli["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| flag(a.as_str().unwrap()))
        .collect();
    assert_eq!(flags_tf, flags_cli, "apiserver flags");
    assert!(flags_cli.contains("--agent-certs-ca-key"));
    assert_eq!(
        names_of(apiserver_tf, "volume"),
        json_names(&apiserver_cli["volumes"]),
        "apiserver volumes"
    );
    assert_eq!(
        names_of(apiserver_container_tf, "volume_mount"),
        json_names(&apiserver_container_cli["volumeMounts"]),
        "apiserver mounts"
    );
    assert_eq!(
        names_of(apiserver_container_tf, "port"),
        json_names(&apiserver_container_cli["ports"]),
        "apiserver ports"
    );

    // Services: the same port names (etcd, and the agent certificate issuer).
    let ports_tf: BTreeSet<String> = tf
        .blocks()
        .filter(|b| {
            b.identifier() == "resource"
                && b.labels().first().map(|l| l.as_str()) == Some("kubernetes_service_v1")
        })
        .flat_map(|b| names_of(block(b.body(), &["spec"]), "port"))
        .collect();
    let ports_cli: BTreeSet<String> = cli
        .iter()
        .filter(|o| o["kind"] == "Service")
        .flat_map(|o| json_names(&o["spec"]["ports"]))
        .collect();
    assert_eq!(ports_tf, ports_cli, "Service ports");

    // The apiserver's RBAC rules.
    let rules_tf: BTreeSet<(Vec<String>, Vec<String>, Vec<String>)> = blocks(
        resource(&tf, "kubernetes_cluster_role_v1", "apiserver"),
        "rule",
    )
    .map(|r| {
        let r = r.body();
        (
            list(r, "api_groups"),
            list(r, "resources"),
            list(r, "verbs"),
        )
    })
    .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let rules_cli: BTreeSet<(Vec<String>, Vec<String>, Vec<String>)> =
        object(&cli, "ClusterRole", "clustermesh-apiserver-east")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    strings(&r["apiGroups"]),
                    strings(&r["resources"]),
                    strings(&r["verbs"]),
                )
            })
            .collect();
    assert_eq!(rules_tf, rules_cli, "apiserver RBAC");
}
