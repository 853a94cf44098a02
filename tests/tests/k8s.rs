//! The Kubernetes manifests of `deploy/k8s`: both kustomizations (the base
//! and the local overlay) render with `kubectl kustomize`, every manifest
//! they render matches the Kubernetes JSON schemas (`kubernetes-validate
//! --strict`, which bundles them, so this runs offline), and the rendered
//! overlay keeps the promises deploy/README.md makes: every server probed,
//! sized and covered by a disruption budget, the orchestrator named after
//! its pod, every variable one its server reads, every Secret either
//! generated or one the README says to create.
//!
//! kubectl (Debian's kubernetes-client) and kubernetes-validate (PyPI) come
//! from deploy/setup.sh; the tests find them through `$KUBECTL` and
//! `$KUBERNETES_VALIDATE`, else in `.tools/bin`, else on PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const KUSTOMIZATIONS: [&str; 2] = ["deploy/k8s/base", "deploy/k8s/overlays/local"];

/// The oldest and the newest Kubernetes whose schemas kubernetes-validate
/// bundles: the manifests must be valid for both.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

/// The gRPC servers: Deployment (and Service, and certificate) name, port,
/// and the sources whose `env = "..."` flags the server reads.
const GRPC_SERVERS: [(&str, u16, &[&str]); 4] = [
    (
        "product",
        50052,
        &["services/platform/src", "services/product/src"],
    ),
    (
        "point",
        50053,
        &["services/platform/src", "services/point/src"],
    ),
    (
        "coupon",
        50054,
        &["services/platform/src", "services/coupon/src"],
    ),
    (
        "orchestrator",
        50051,
        &["services/platform/src", "orchestrator/src"],
    ),
];

const BFF_SOURCES: &[&str] = &["services/bff/src"];

/// Variables read by a library rather than a flag: `RUST_LOG` is the log
/// filter of every server's telemetry (`EnvFilter::from_default_env`), and
/// the OpenTelemetry SDK reads the `OTEL_*` ones (README, "Traces").
const READ_WITHOUT_A_FLAG: [&str; 2] = ["RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The local overlay's trace viewer: a development tool with one replica
/// whose traces live in memory, so no disruption budget.
const TRACE_VIEWER: &str = "traces";

/// Where every server serves Prometheus metrics in a pod.
const METRICS_PORT: u16 = 9464;

/// Secrets the overlay does not generate: deploy/README.md ("Kubernetes")
/// has the `kubectl create secret` commands that make them.
const SECRETS_MADE_BY_HAND: [&str; 6] = [
    "product-tls",
    "point-tls",
    "coupon-tls",
    "orchestrator-tls",
    "bff-tls",
    "bff-jwt",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the repository")
        .to_path_buf()
}

/// A tool: `$<variable>`, else `.tools/bin/<name>`, else `<name>` on PATH;
/// missing everywhere, the test fails saying where it comes from.
fn tool(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let tools = repo_root().join(".tools/bin").join(name);
    if tools.is_file() {
        return tools;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "{name} not found (${variable}, .tools/bin/{name}, PATH): run deploy/setup.sh, \
             which installs it"
        )
    })
}

fn kubectl() -> PathBuf {
    tool("KUBECTL", "kubectl")
}

fn kubernetes_validate() -> PathBuf {
    tool("KUBERNETES_VALIDATE", "kubernetes-validate")
}

/// Runs `command` with `input` on its standard input and returns its output,
/// whatever its exit status.
fn run(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} ({e}); deploy/setup.sh installs it",
                command.get_program()
            )
        });
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.as_bytes())
        .expect("writing the tool's input");
    drop(stdin);
    child.wait_with_output().expect("waiting for the tool")
}

fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// `kubectl kustomize <dir>`: the rendered manifests, as YAML.
fn render(kustomization: &str) -> String {
    let output = run(
        Command::new(kubectl())
            .arg("kustomize")
            .arg(repo_root().join(kustomization)),
        "",
    );
    succeeded(&format!("kubectl kustomize {kustomization}"), &output)
}

/// The rendered manifests as JSON objects, converted by kubectl itself
/// (`annotate --local` reads YAML and prints JSON without a cluster; the
/// annotation it removes is one nothing carries).
fn objects(kustomization: &str) -> Vec<Value> {
    let output = run(
        Command::new(kubectl()).args([
            "annotate",
            "--local",
            "-f",
            "-",
            "-o",
            "json",
            "commerce.invalid/none-",
        ]),
        &render(kustomization),
    );
    let json = succeeded("kubectl annotate --local -o json", &output);
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_str(&json).into_iter::<Value>() {
        let value = value.expect("kubectl prints JSON objects");
        match value["kind"].as_str() {
            Some("List") => objects.extend(value["items"].as_array().cloned().unwrap_or_default()),
            _ => objects.push(value),
        }
    }
    objects
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind: &str, wanted: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && name(o) == wanted)
        .unwrap_or_else(|| panic!("no {kind} {wanted} in the rendered overlay"))
}

/// A generated object's name without kustomize's hash suffix.
fn base_name(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, hash))
            if hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            base
        }
        _ => name,
    }
}

fn containers(deployment: &Value) -> &Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("Deployment {} has no containers", name(deployment)))
}

/// `"a": "b"` pairs of a JSON object, as strings.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every `env = "NAME"` of the Rust files under `dirs`: the variables a
/// server reads through its clap flags.
fn declared_variables(dirs: &[&str]) -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("a Rust source");
                for piece in source.split("env = \"").skip(1) {
                    if let Some((variable, _)) = piece.split_once('"') {
                        found.insert(variable.to_owned());
                    }
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    for dir in dirs {
        walk(&repo_root().join(dir), &mut found);
    }
    found
}

#[test]
fn every_rendered_manifest_matches_the_kubernetes_schemas() {
    let validate = kubernetes_validate();
    for kustomization in KUSTOMIZATIONS {
        let yaml = render(kustomization);
        let count = objects(kustomization).len();
        assert!(count > 0, "{kustomization} renders nothing");
        for version in KUBERNETES_VERSIONS {
            let output = run(
                Command::new(&validate).args(["--strict", "-k", version, "-"]),
                &yaml,
            );
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success(),
                "{kustomization} does not match the Kubernetes {version} schemas:\n{report}"
            );
            // An unknown kind passes with a warning: none may be unknown.
            assert!(
                !report.contains("WARN"),
                "{kustomization}, Kubernetes {version}:\n{report}"
            );
            let passed = report.matches("passed for resource").count();
            assert_eq!(
                passed, count,
                "{kustomization}, Kubernetes {version}: {count} manifests, {passed} checked:\n{report}"
            );
        }
    }
}

#[test]
fn every_server_is_probed_sized_and_covered_by_a_disruption_budget() {
    let objects = objects("deploy/k8s/overlays/local");
    let deployments = of_kind(&objects, "Deployment");
    let names: BTreeSet<&str> = deployments.iter().map(|d| name(d)).collect();
    let expected: BTreeSet<&str> = GRPC_SERVERS
        .iter()
        .map(|(server, ..)| *server)
        .chain(["bff", TRACE_VIEWER])
        .collect();
    assert_eq!(names, expected, "the Deployments");
    find(&objects, "Namespace", "commerce");
    for object in objects.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(
            object["metadata"]["namespace"],
            "commerce",
            "{} {} is outside the overlay's namespace",
            object["kind"],
            name(object)
        );
    }

    let budgets = of_kind(&objects, "PodDisruptionBudget");
    for deployment in &deployments {
        let deployment_name = name(deployment);
        for container in containers(deployment) {
            let container_name = container["name"].as_str().unwrap_or_default();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert!(
                    container[probe].is_object(),
                    "{deployment_name}/{container_name} has no {probe}"
                );
            }
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"]["requests"][resource].is_string(),
                    "{deployment_name}/{container_name} requests no {resource}"
                );
            }
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{deployment_name}/{container_name} has no memory limit"
            );
        }

        // Some budget selects this Deployment's pods and lets a drain evict
        // at least one of them while keeping one.
        if deployment_name == TRACE_VIEWER {
            continue;
        }
        let pod_labels = string_map(&deployment["spec"]["template"]["metadata"]["labels"]);
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let covering: Vec<&&Value> = budgets
            .iter()
            .filter(|budget| {
                let selector = string_map(&budget["spec"]["selector"]["matchLabels"]);
                !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(
            covering.len(),
            1,
            "{deployment_name}: one PodDisruptionBudget should cover its pods"
        );
        let min_available = covering[0]["spec"]["minAvailable"].as_i64();
        assert!(
            min_available.is_some_and(|min| min >= 1 && min < replicas),
            "{deployment_name}: {replicas} replicas, minAvailable {min_available:?}: \
             a drain must keep one and may evict one"
        );
    }
}

#[test]
fn grpc_servers_are_probed_over_mutual_tls_and_the_bff_over_http() {
    let objects = objects("deploy/k8s/overlays/local");
    for (server, port, _) in GRPC_SERVERS {
        let deployment = find(&objects, "Deployment", server);
        let container = &containers(deployment)[0];
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            // Kubelet's grpc probe speaks plaintext, which the servers refuse.
            assert!(
                container[probe]["grpc"].is_null(),
                "{server}'s {probe} is a grpc probe, which cannot present a certificate"
            );
            let command = container[probe]["exec"]["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{server}'s {probe} is not an exec probe"))
                .iter()
                .map(|part| part.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ");
            for part in [
                "grpcurl".to_owned(),
                "-cacert /certs/ca.pem".to_owned(),
                format!("-cert /certs/{server}.pem"),
                format!("-key /certs/{server}.key"),
                format!("127.0.0.1:{port} grpc.health.v1.Health/Check"),
            ] {
                assert!(
                    command.contains(&part),
                    "{server}'s {probe} `{command}` lacks `{part}`"
                );
            }
        }
        assert_eq!(
            container["ports"][0]["containerPort"], port,
            "{server}'s port"
        );
        let env = &container["env"];
        let listen = env
            .as_array()
            .and_then(|vars| vars.iter().find(|v| v["name"] == "LISTEN_ADDR"))
            .unwrap_or_else(|| panic!("{server} gets no LISTEN_ADDR"));
        assert_eq!(
            listen["value"],
            format!("0.0.0.0:{port}"),
            "{server}'s LISTEN_ADDR"
        );
        // Callers dial the Service by the name the server's certificate names.
        let service = find(&objects, "Service", server);
        assert_eq!(
            service["spec"]["ports"][0]["port"], port,
            "{server}'s Service port"
        );
        assert_eq!(
            string_map(&service["spec"]["selector"]),
            string_map(&deployment["spec"]["selector"]["matchLabels"]),
            "{server}'s Service selects its pods"
        );
    }

    let bff = &containers(find(&objects, "Deployment", "bff"))[0];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            bff[probe]["httpGet"]["path"], "/healthz",
            "the BFF's {probe}"
        );
    }
}

#[test]
fn each_orchestrator_is_named_after_its_pod() {
    let objects = objects("deploy/k8s/overlays/local");
    let orchestrator = find(&objects, "Deployment", "orchestrator");
    assert!(
        orchestrator["spec"]["replicas"].as_i64() >= Some(2),
        "the orchestrator runs as several instances"
    );
    let container = &containers(orchestrator)[0];
    let instance_id = container["env"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == "INSTANCE_ID"))
        .expect("the orchestrator gets INSTANCE_ID");
    assert_eq!(
        instance_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "INSTANCE_ID comes from the pod's name"
    );
    // And the orchestrator reads that variable as its --instance-id.
    assert!(declared_variables(&["orchestrator/src"]).contains("INSTANCE_ID"));
}

#[test]
fn every_variable_is_one_its_server_reads_and_every_reference_resolves() {
    let objects = objects("deploy/k8s/overlays/local");
    let data_keys = |kind: &str, wanted: &str| -> BTreeSet<String> {
        let object = objects
            .iter()
            .find(|o| o["kind"] == kind && base_name(name(o)) == wanted)
            .unwrap_or_else(|| panic!("{kind} {wanted} is referenced but not rendered"));
        object["data"]
            .as_object()
            .map(|data| data.keys().cloned().collect())
            .unwrap_or_default()
    };
    let rendered_secrets: BTreeSet<&str> = of_kind(&objects, "Secret")
        .into_iter()
        .map(|s| base_name(name(s)))
        .collect();
    let mut made_by_hand = BTreeSet::new();

    let servers = GRPC_SERVERS
        .iter()
        .map(|(server, _, sources)| (*server, *sources))
        .chain([("bff", BFF_SOURCES)]);
    for (server, sources) in servers {
        let mut declared = declared_variables(sources);
        declared.extend(READ_WITHOUT_A_FLAG.map(str::to_owned));
        let deployment = find(&objects, "Deployment", server);
        let container = &containers(deployment)[0];
        let mut variables = BTreeSet::new();
        for var in container["env"].as_array().into_iter().flatten() {
            variables.insert(var["name"].as_str().unwrap_or_default().to_owned());
        }
        for source in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(map) = source["configMapRef"]["name"].as_str() {
                variables.extend(data_keys("ConfigMap", base_name(map)));
            }
            if let Some(secret) = source["secretRef"]["name"].as_str() {
                variables.extend(data_keys("Secret", base_name(secret)));
            }
        }
        let unknown: Vec<&String> = variables.difference(&declared).collect();
        assert!(
            unknown.is_empty(),
            "{server} is given {unknown:?}, which it does not read (no `env = \"...\"` in {sources:?})"
        );
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(secret) = volume["secret"]["secretName"].as_str()
                && !rendered_secrets.contains(base_name(secret))
            {
                made_by_hand.insert(secret.to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = SECRETS_MADE_BY_HAND.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        made_by_hand, expected,
        "the Secrets deploy/README.md says to create are exactly those the overlay does not generate"
    );

    // MySQL and Redis are outside the cluster, by the names the URLs use.
    for external in ["mysql", "redis"] {
        let service = find(&objects, "Service", external);
        assert_eq!(service["spec"]["type"], "ExternalName", "{external}");
    }
}

#[test]
fn every_server_serves_metrics_and_sends_its_spans_to_the_trace_viewer() {
    let objects = objects("deploy/k8s/overlays/local");
    let config = |deployment: &Value| -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for source in containers(deployment)[0]["envFrom"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(map) = source["configMapRef"]["name"].as_str() {
                values.extend(string_map(&find(&objects, "ConfigMap", map)["data"]));
            }
        }
        values
    };
    let servers = GRPC_SERVERS
        .iter()
        .map(|(server, ..)| *server)
        .chain(["bff"]);
    for server in servers {
        let deployment = find(&objects, "Deployment", server);
        let annotations = string_map(&deployment["spec"]["template"]["metadata"]["annotations"]);
        let port = METRICS_PORT.to_string();
        for (key, value) in [
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", port.as_str()),
            ("prometheus.io/path", "/metrics"),
        ] {
            assert_eq!(
                annotations.get(key).map(String::as_str),
                Some(value),
                "{server}'s pods: annotation {key}"
            );
        }
        let ports = containers(deployment)[0]["ports"].as_array().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"] == METRICS_PORT),
            "{server} declares no metrics port {METRICS_PORT}: {ports:?}"
        );
        let config = config(deployment);
        assert_eq!(
            config.get("METRICS_LISTEN"),
            Some(&format!("0.0.0.0:{METRICS_PORT}")),
            "{server}'s METRICS_LISTEN"
        );
        assert_eq!(
            config
                .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(String::as_str),
            Some("http://traces:4317"),
            "{server} exports its spans to the overlay's trace viewer"
        );
    }
    let viewer = find(&objects, "Service", TRACE_VIEWER);
    let ports: Vec<&Value> = viewer["spec"]["ports"].as_array().unwrap().iter().collect();
    assert!(
        ports.iter().any(|p| p["port"] == 4317),
        "the trace viewer's Service receives OTLP/gRPC on 4317: {ports:?}"
    );
    assert_eq!(
        string_map(&viewer["spec"]["selector"]),
        string_map(&find(&objects, "Deployment", TRACE_VIEWER)["spec"]["selector"]["matchLabels"]),
        "the trace viewer's Service selects its pod"
    );
}
