//! The deployment examples agree with the binary. The Kubernetes manifests
//! (`examples/kubernetes/`), the Compose file (`examples/compose/`) and the `Dockerfile` are
//! read as YAML and text; the kestra-edge TOML they carry is parsed by the gateway's own
//! configuration parser, with the arguments the container is given; then the probes' paths and
//! ports, the container and Service ports, the mounts behind every file the config names, and
//! Kestra's `kestra.url` and context path are checked against the parsed settings. The
//! Kubernetes config is also started for real on loopback in front of the stand-in, and the
//! probes' paths are asked on its admin listener. `a_broken_example_fails_the_checks` shows
//! each check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use clap::Parser;
use kestra_edge_gateway::{Args, Gateway, GatewayConfig};
use kestra_edge_standin::{Standin, StandinConfig};
use kestra_edge_tests::client;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use yaml_rust2::{Yaml, YamlLoader};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The one YAML document of `text`.
fn document(name: &str, text: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(text).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(docs.len(), 1, "{name}: one document per file");
    docs.remove(0)
}

fn string(node: &Yaml) -> Option<String> {
    match node {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A string-to-string mapping (labels, selectors, annotations, a ConfigMap's data).
fn map(node: &Yaml) -> BTreeMap<String, String> {
    node.as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((string(k)?, string(v)?)))
        .collect()
}

fn list(node: &Yaml) -> &[Yaml] {
    node.as_vec().map_or(&[], Vec::as_slice)
}

/// Whether every pair of `selector` is in `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Problems found, each naming the file and what disagrees.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn assert_none(&self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }

    fn assert_mentions(&self, what: &str, expected: &str) {
        assert!(
            self.0.iter().any(|p| p.contains(expected)),
            "{what}: expected a problem mentioning {expected:?}, got {:#?}",
            self.0
        );
    }
}

/// Parses `argv` (the container's arguments) with the gateway's own parser, the `--config`
/// value replaced by a temporary copy of `toml`. Like the binary, clap also reads the
/// `KESTRA_EDGE_*` variables: none may be set around this test.
fn parse_config(argv: &[String], config_path: &str, toml: &str) -> Result<GatewayConfig, String> {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let set: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("KESTRA_EDGE_"))
        .collect();
    assert!(
        set.is_empty(),
        "unset {set:?}: they would override the examples' files"
    );
    let file = std::env::temp_dir().join(format!(
        "kestra-edge-manifests-{}-{}.toml",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, toml).unwrap();
    let argv: Vec<String> = std::iter::once("kestra-edge".to_owned())
        .chain(argv.iter().map(|arg| {
            if arg == config_path {
                file.display().to_string()
            } else {
                arg.clone()
            }
        }))
        .collect();
    let parsed = Args::try_parse_from(&argv)
        .map_err(|err| err.to_string())
        .and_then(|args| GatewayConfig::from_args(args).map_err(|err| err.to_string()))
        .and_then(|config| {
            config.validate().map_err(|err| err.to_string())?;
            Ok(config)
        });
    std::fs::remove_file(file).unwrap();
    parsed
}

/// The value after `--config` (or in `--config=…`).
fn config_arg(argv: &[String]) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, arg)| {
        if arg == "--config" {
            argv.get(i + 1).cloned()
        } else {
            arg.strip_prefix("--config=").map(str::to_owned)
        }
    })
}

/// The host and port of an `http://host:port` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

// ---- Kubernetes --------------------------------------------------------------------------------

const KUBERNETES: &str = "examples/kubernetes";
const LIVEZ: &str = "/livez";
const READYZ: &str = "/readyz";

/// The example's files as text, so that a test can break one.
#[derive(Clone)]
struct Kubernetes {
    files: BTreeMap<String, String>,
}

impl Kubernetes {
    fn load() -> Self {
        let dir = root().join(KUBERNETES);
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .map(|name| {
                let text = read(&format!("{KUBERNETES}/{name}"));
                (name, text)
            })
            .collect();
        Self { files }
    }

    /// Replaces the first `from` in `file` by `to` (which must be there).
    fn broken(&self, file: &str, from: &str, to: &str) -> Self {
        let mut broken = self.clone();
        let text = broken.files.get_mut(file).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        *text = text.replacen(from, to, 1);
        broken
    }

    fn doc(&self, name: &str) -> Yaml {
        let text = self
            .files
            .get(name)
            .unwrap_or_else(|| panic!("{KUBERNETES}/{name} is missing"));
        document(name, text)
    }

    /// The problems, and the parsed kestra-edge settings when they could be parsed.
    fn check(&self) -> (Problems, Option<GatewayConfig>) {
        let mut p = Problems::default();
        let configmap = self.doc("configmap.yaml");
        let deployment = self.doc("deployment.yaml");
        let service = self.doc("service.yaml");
        let headless = self.doc("kestra-webserver-headless.yaml");
        let kustomization = self.doc("kustomization.yaml");

        for (name, doc, kind) in [
            ("configmap.yaml", &configmap, "ConfigMap"),
            ("deployment.yaml", &deployment, "Deployment"),
            ("service.yaml", &service, "Service"),
            ("kestra-webserver-headless.yaml", &headless, "Service"),
        ] {
            p.check(doc["kind"].as_str() == Some(kind), || {
                format!("{name}: kind is not {kind}")
            });
        }
        // `kubectl apply -k`: every manifest of the folder, in one namespace.
        let namespace = kustomization["namespace"].as_str().unwrap_or_default();
        let listed: BTreeSet<String> = list(&kustomization["resources"])
            .iter()
            .filter_map(string)
            .collect();
        let present: BTreeSet<String> = self
            .files
            .keys()
            .filter(|name| name.as_str() != "kustomization.yaml")
            .cloned()
            .collect();
        p.check(listed == present, || {
            format!("kustomization.yaml: resources {listed:?}, files {present:?}")
        });
        for doc in [&configmap, &deployment, &service, &headless] {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or_default();
            p.check(ns == namespace, || {
                format!("namespace {ns:?} is not the kustomization's {namespace:?}")
            });
        }

        // The Deployment: two replicas, its selector on its own pods.
        let spec = &deployment["spec"];
        p.check(spec["replicas"].as_i64() == Some(2), || {
            format!(
                "deployment.yaml: replicas {:?}, expected 2",
                spec["replicas"]
            )
        });
        let pod = &spec["template"]["spec"];
        let pod_labels = map(&spec["template"]["metadata"]["labels"]);
        p.check(
            selects(&map(&spec["selector"]["matchLabels"]), &pod_labels),
            || "deployment.yaml: selector.matchLabels does not select the pod template".to_owned(),
        );
        let containers = list(&pod["containers"]);
        assert_eq!(containers.len(), 1, "deployment.yaml: one container");
        let container = &containers[0];

        // Every setting is in the ConfigMap: a KESTRA_EDGE_* variable would beat the file.
        for var in list(&container["env"]) {
            let name = var["name"].as_str().unwrap_or_default();
            p.check(!name.starts_with("KESTRA_EDGE_"), || {
                format!("deployment.yaml: env {name} overrides the ConfigMap")
            });
        }
        p.check(container["command"].is_badvalue(), || {
            "deployment.yaml: command replaces the image's kestra-edge entrypoint".to_owned()
        });
        let argv: Vec<String> = list(&container["args"]).iter().filter_map(string).collect();

        // Volumes and where they are mounted.
        let volumes: BTreeMap<String, &Yaml> = list(&pod["volumes"])
            .iter()
            .filter_map(|v| Some((string(&v["name"])?, v)))
            .collect();
        let mounts: Vec<(String, String)> = list(&container["volumeMounts"])
            .iter()
            .filter_map(|m| Some((string(&m["name"])?, string(&m["mountPath"])?)))
            .collect();
        // The volume and the file name inside it that `path` is, if a mount holds it.
        let mounted = |path: &Path| -> Option<(&Yaml, String)> {
            mounts.iter().find_map(|(volume, dir)| {
                let file = path.strip_prefix(dir).ok()?.to_str()?.to_owned();
                (!file.is_empty()).then_some(())?;
                Some((*volumes.get(volume)?, file))
            })
        };

        // --config names a key of the ConfigMap, mounted where the argument points.
        let Some(config_path) = config_arg(&argv) else {
            p.0.push(format!("deployment.yaml: args {argv:?} have no --config"));
            return (p, None);
        };
        let configmap_name = configmap["metadata"]["name"].as_str().unwrap_or_default();
        let data = map(&configmap["data"]);
        let toml = match mounted(Path::new(&config_path)) {
            Some((volume, file))
                if volume["configMap"]["name"].as_str() == Some(configmap_name) =>
            {
                // With `items`, only the listed keys are there, each at its item's path.
                let items = list(&volume["configMap"]["items"]);
                let key = if items.is_empty() {
                    Some(file)
                } else {
                    items
                        .iter()
                        .find(|item| item["path"].as_str() == Some(file.as_str()))
                        .and_then(|item| string(&item["key"]))
                };
                key.and_then(|key| data.get(&key).cloned())
            }
            _ => None,
        };
        let Some(toml) = toml else {
            p.0.push(format!(
                "deployment.yaml: --config {config_path} is not a key of ConfigMap \
                 {configmap_name:?} mounted there"
            ));
            return (p, None);
        };
        let config = match parse_config(&argv, &config_path, &toml) {
            Ok(config) => config,
            Err(err) => {
                p.0.push(format!("configmap.yaml: the gateway refuses it: {err}"));
                return (p, None);
            }
        };

        // The listeners: on every interface of the pod (the kubelet probes the pod IP).
        let listen = config.listener.listen;
        let Some(admin) = config.telemetry.admin_listen else {
            p.0.push("configmap.yaml: no admin_listen, so no /livez or /readyz".to_owned());
            return (p, None);
        };
        for (key, addr) in [("listen", Some(listen)), ("admin_listen", Some(admin))]
            .into_iter()
            .chain([("redirect_http", config.tls.redirect_http)])
        {
            if let Some(addr) = addr {
                p.check(addr.ip().is_unspecified(), || {
                    format!("configmap.yaml: {key} {addr} is unreachable from outside the pod")
                });
            }
        }

        // Container ports: exactly the ports kestra-edge listens on.
        let ports: BTreeMap<String, u16> = list(&container["ports"])
            .iter()
            .filter_map(|port| {
                let number = u16::try_from(port["containerPort"].as_i64()?).ok()?;
                Some((string(&port["name"]).unwrap_or_default(), number))
            })
            .collect();
        let listening: BTreeSet<u16> = [Some(listen), Some(admin), config.tls.redirect_http]
            .into_iter()
            .flatten()
            .map(|addr| addr.port())
            .collect();
        let declared: BTreeSet<u16> = ports.values().copied().collect();
        p.check(declared == listening, || {
            format!("deployment.yaml: containerPorts {declared:?}, listening on {listening:?}")
        });
        // A probe's or a Service's port: a number, or a container port's name.
        let resolve = |port: &Yaml| -> Option<u16> {
            match port {
                Yaml::Integer(n) => u16::try_from(*n).ok(),
                Yaml::String(name) => ports.get(name).copied(),
                _ => None,
            }
        };

        // The probes: /livez and /readyz on the admin listener, plain HTTP.
        for (probe, path) in [("livenessProbe", LIVEZ), ("readinessProbe", READYZ)] {
            let get = &container[probe]["httpGet"];
            p.check(get["path"].as_str() == Some(path), || {
                format!(
                    "deployment.yaml: {probe} path {:?}, expected {path}",
                    get["path"]
                )
            });
            let port = resolve(&get["port"]);
            p.check(port == Some(admin.port()), || {
                format!(
                    "deployment.yaml: {probe} port {:?} ({port:?}) is not admin_listen's {}",
                    get["port"],
                    admin.port()
                )
            });
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            p.check(scheme == "HTTP", || {
                format!(
                    "deployment.yaml: {probe} scheme {scheme}, the admin listener is plain HTTP"
                )
            });
        }
        let annotations = map(&spec["template"]["metadata"]["annotations"]);
        if let Some(port) = annotations.get("prometheus.io/port") {
            p.check(port == &admin.port().to_string(), || {
                format!("deployment.yaml: prometheus.io/port {port} is not admin_listen's")
            });
        }

        // The Service: selects the pods, reaches the proxy's ports, never the admin port.
        p.check(
            selects(&map(&service["spec"]["selector"]), &pod_labels),
            || "service.yaml: its selector does not select the Deployment's pods".to_owned(),
        );
        let targets: Vec<Option<u16>> = list(&service["spec"]["ports"])
            .iter()
            .map(|port| resolve(&port["targetPort"]).or_else(|| resolve(&port["port"])))
            .collect();
        p.check(targets.contains(&Some(listen.port())), || {
            format!("service.yaml: no port targets listen's {}", listen.port())
        });
        for target in &targets {
            let proxy = target.is_some_and(|t| t == listen.port())
                || target.is_some_and(|t| Some(t) == config.tls.redirect_http.map(|a| a.port()));
            p.check(proxy, || {
                format!("service.yaml: the Service targets {target:?}, not a proxy port")
            });
        }

        // Every file the config names is in a mounted volume.
        let files = [
            ("tls_cert", config.tls.cert_file.clone()),
            ("tls_key", config.tls.key_file.clone()),
            (
                "affinity_key_file",
                config.balance.affinity_key_file.clone(),
            ),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                p.check(mounted(&path).is_some(), || {
                    format!(
                        "configmap.yaml: {key} {} is in no mounted volume",
                        path.display()
                    )
                });
            }
        }

        // Pod security and resources.
        let security = &container["securityContext"];
        p.check(
            security["readOnlyRootFilesystem"].as_bool() == Some(true),
            || "deployment.yaml: readOnlyRootFilesystem is not true".to_owned(),
        );
        let non_root = security["runAsNonRoot"]
            .as_bool()
            .or(pod["securityContext"]["runAsNonRoot"].as_bool());
        p.check(non_root == Some(true), || {
            "deployment.yaml: runAsNonRoot is not true".to_owned()
        });
        for kind in ["requests", "limits"] {
            p.check(!map(&container["resources"][kind]).is_empty(), || {
                format!("deployment.yaml: no resources.{kind}")
            });
        }

        // Kubernetes waits for the preStop sleep and the drain before it kills the pod.
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap_or(0);
        let drain = i64::try_from(config.listener.shutdown_grace.as_secs()).unwrap();
        p.check(grace > pre_stop + drain, || {
            format!(
                "deployment.yaml: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + \
                 shutdown_grace {drain} s"
            )
        });

        // Kestra's webserver pods: the headless Service's name, its ports, its health.
        let name = headless["metadata"]["name"].as_str().unwrap_or_default();
        let hs = &headless["spec"];
        p.check(hs["clusterIP"].as_str() == Some("None"), || {
            "kestra-webserver-headless.yaml: clusterIP is not None (not headless)".to_owned()
        });
        // The name resolves to the pods' own addresses: kestra-edge connects to the pods' ports
        // (targetPort), never to the Service's `port`.
        let headless_ports: BTreeMap<String, u16> = list(&hs["ports"])
            .iter()
            .filter_map(|port| {
                let target = port["targetPort"].as_i64().or(port["port"].as_i64())?;
                Some((string(&port["name"])?, u16::try_from(target).ok()?))
            })
            .collect();
        let names = [
            name.to_owned(),
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ];
        let upstream = host_port(&config.upstream.url);
        p.check(
            upstream.as_ref().is_some_and(|(host, port)| {
                names.contains(host) && Some(port) == headless_ports.get("http")
            }),
            || {
                format!(
                    "configmap.yaml: upstream {} is not the headless Service {name}'s http port \
                     {:?}",
                    config.upstream.url,
                    headless_ports.get("http")
                )
            },
        );
        p.check(config.upstream.more.is_empty(), || {
            "configmap.yaml: one upstream, the headless Service".to_owned()
        });
        p.check(
            config.balance.health_port == headless_ports.get("management").copied(),
            || {
                format!(
                    "configmap.yaml: health_port {:?} is not the headless Service's management \
                     port {:?}",
                    config.balance.health_port,
                    headless_ports.get("management")
                )
            },
        );
        p.check(
            config.balance.health_path.as_deref() == Some("/health/readiness"),
            || "configmap.yaml: health_path is not Kestra's /health/readiness".to_owned(),
        );
        (p, Some(config))
    }
}

/// A self-signed certificate and key for `localhost`, as PEM files in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test]
async fn the_kubernetes_example_agrees_with_the_binary() {
    let (problems, checked) = Kubernetes::load().check();
    problems.assert_none();
    let mut config = checked.unwrap();
    assert!(config.prefix.context_path.is_some());

    // The parsed config, started for real: the addresses moved to loopback, the headless
    // Service's name to the stand-in (whose management port answers /health/readiness), the
    // mounted Secrets to files made here. Nothing else changes.
    let standin = Standin::start(StandinConfig {
        management: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kestra-edge-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listener.listen = loopback;
    config.telemetry.admin_listen = Some(loopback);
    if config.tls.redirect_http.is_some() {
        config.tls.redirect_http = Some(loopback);
    }
    if config.tls.cert_file.is_some() {
        let (cert, key) = certificate(&dir);
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
    }
    if config.balance.affinity_key_file.is_some() {
        let key = dir.join("affinity-key");
        std::fs::write(&key, "a key shared by every kestra-edge pod").unwrap();
        config.balance.affinity_key_file = Some(key);
    }
    config.upstream.url = standin.url();
    config.balance.health_port = Some(standin.management_addr().unwrap().port());
    config.balance.dns_refresh = None;
    config.listener.workers = std::num::NonZeroUsize::MIN;

    let gateway = Gateway::bind(config).await.unwrap();
    let admin = gateway.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));
    let http = client();
    let get = |path: &str| {
        let request = http.get(format!("http://{admin}{path}")).send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get(LIVEZ).await, (200, "ok\n".to_owned()));
    // Ready once the replica's health check (Kestra's /health/readiness) has passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(READYZ).await;
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{READYZ} stayed {status} ({body})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- Compose and the Dockerfile ----------------------------------------------------------------

const COMPOSE: &str = "examples/compose";

#[derive(Clone)]
struct Compose {
    compose: String,
    toml: String,
    dockerfile: String,
}

impl Compose {
    fn load() -> Self {
        Self {
            compose: read(&format!("{COMPOSE}/docker-compose.yml")),
            toml: read(&format!("{COMPOSE}/kestra-edge.toml")),
            dockerfile: read("Dockerfile"),
        }
    }

    fn broken(&self, file: &str, from: &str, to: &str) -> Self {
        let mut broken = self.clone();
        let text = match file {
            "docker-compose.yml" => &mut broken.compose,
            "kestra-edge.toml" => &mut broken.toml,
            "Dockerfile" => &mut broken.dockerfile,
            _ => panic!("{file}"),
        };
        assert!(text.contains(from), "{file} has no {from:?}");
        *text = text.replacen(from, to, 1);
        broken
    }

    fn check(&self) -> Problems {
        let mut p = Problems::default();
        let compose = document("docker-compose.yml", &self.compose);
        let services = &compose["services"];
        let edge = &services["kestra-edge"];
        let kestra = &services["kestra"];
        assert!(edge.as_hash().is_some() && kestra.as_hash().is_some());

        // kestra-edge: its command and the mounted kestra-edge.toml, parsed by the gateway.
        let argv: Vec<String> = list(&edge["command"]).iter().filter_map(string).collect();
        let Some(config_path) = config_arg(&argv) else {
            p.0.push(format!(
                "docker-compose.yml: command {argv:?} has no --config"
            ));
            return p;
        };
        let mounted = list(&edge["volumes"])
            .iter()
            .filter_map(string)
            .any(|volume| {
                let mut parts = volume.split(':');
                parts.next() == Some("./kestra-edge.toml") && parts.next() == Some(&config_path)
            });
        p.check(mounted, || {
            format!("docker-compose.yml: ./kestra-edge.toml is not mounted at {config_path}")
        });
        let config = match parse_config(&argv, &config_path, &self.toml) {
            Ok(config) => config,
            Err(err) => {
                p.0.push(format!("kestra-edge.toml: the gateway refuses it: {err}"));
                return p;
            }
        };
        let listen = config.listener.listen;
        p.check(listen.ip().is_unspecified(), || {
            format!("kestra-edge.toml: listen {listen} is unreachable from outside the container")
        });

        // Published ports: [ip:]host:container.
        let published: Vec<(Option<String>, u16, u16)> = list(&edge["ports"])
            .iter()
            .filter_map(string)
            .filter_map(|spec| {
                let parts: Vec<&str> = spec.split(':').collect();
                let (ip, host, container) = match parts.as_slice() {
                    [host, container] => (None, host, container),
                    [ip, host, container] => (Some((*ip).to_owned()), host, container),
                    _ => return None,
                };
                Some((ip, host.parse().ok()?, container.parse().ok()?))
            })
            .collect();
        let public = published
            .iter()
            .find(|(_, _, container)| *container == listen.port())
            .map(|(_, host, _)| *host);
        p.check(public.is_some(), || {
            format!(
                "docker-compose.yml: listen's port {} is not published",
                listen.port()
            )
        });
        if let Some(admin) = config.telemetry.admin_listen {
            for (ip, _, container) in &published {
                p.check(
                    *container != admin.port() || ip.as_deref() == Some("127.0.0.1"),
                    || {
                        "docker-compose.yml: the admin port is published beyond 127.0.0.1"
                            .to_owned()
                    },
                );
            }
        }

        // Kestra: only reachable through kestra-edge, under the same context path, and with
        // kestra.url the URL the browser uses.
        p.check(kestra["ports"].is_badvalue(), || {
            "docker-compose.yml: Kestra's own port is published, bypassing kestra-edge".to_owned()
        });
        let Some(settings) = kestra["environment"]["KESTRA_CONFIGURATION"].as_str() else {
            p.0.push("docker-compose.yml: Kestra has no KESTRA_CONFIGURATION".to_owned());
            return p;
        };
        let settings = document("KESTRA_CONFIGURATION", settings);
        let ctx = config.prefix.context_path.clone().unwrap_or_default();
        let kestra_ctx = settings["micronaut"]["server"]["context-path"]
            .as_str()
            .unwrap_or_default();
        p.check(kestra_ctx == ctx, || {
            format!(
                "docker-compose.yml: Kestra's context-path {kestra_ctx:?} is not kestra-edge's \
                 context_path {ctx:?}"
            )
        });
        let scheme = if config.tls.source().ok().flatten().is_some() {
            "https"
        } else {
            "http"
        };
        let url = settings["kestra"]["url"].as_str().unwrap_or_default();
        let expected = format!("{scheme}://localhost:{}{ctx}/", public.unwrap_or(0));
        p.check(url == expected, || {
            format!("docker-compose.yml: kestra.url {url:?}, the browser's URL is {expected:?}")
        });
        let upstream = host_port(&config.upstream.url);
        let kestra_port = settings["micronaut"]["server"]["port"]
            .as_i64()
            .unwrap_or(8080);
        p.check(
            upstream.is_some_and(|(host, port)| host == "kestra" && i64::from(port) == kestra_port),
            || {
                format!(
                    "kestra-edge.toml: upstream {} is not the kestra service's port {kestra_port}",
                    config.upstream.url
                )
            },
        );
        p.check(config.balance.health_port == Some(8081), || {
            "kestra-edge.toml: health_port is not Kestra's management port 8081".to_owned()
        });

        // The image: ports, default config file and user agree with the examples.
        let instruction = |name: &str| -> Vec<String> {
            self.dockerfile
                .lines()
                .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .map(|rest| rest.trim().to_owned())
                .collect()
        };
        let exposed: BTreeSet<u16> = instruction("EXPOSE")
            .iter()
            .flat_map(|ports| ports.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect();
        let listening: BTreeSet<u16> = [Some(listen), config.telemetry.admin_listen]
            .into_iter()
            .flatten()
            .map(|addr| addr.port())
            .collect();
        p.check(exposed == listening, || {
            format!("Dockerfile: EXPOSE {exposed:?}, the Compose config listens on {listening:?}")
        });
        let cmd = instruction("CMD");
        let default_args: Vec<String> = cmd
            .first()
            .and_then(|cmd| serde_json::from_str(cmd).ok())
            .unwrap_or_default();
        p.check(
            config_arg(&default_args) == Some(config_path.clone()),
            || format!("Dockerfile: CMD {cmd:?} does not read {config_path}"),
        );
        p.check(instruction("ENV").is_empty(), || {
            "Dockerfile: ENV KESTRA_EDGE_* would beat the mounted config file".to_owned()
        });
        let copied = format!("{COMPOSE}/kestra-edge.toml {config_path}");
        p.check(instruction("COPY").contains(&copied), || {
            format!("Dockerfile: no COPY {copied}")
        });
        let deployment = document(
            "deployment.yaml",
            &read(&format!("{KUBERNETES}/deployment.yaml")),
        );
        let uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
            .as_i64()
            .unwrap_or_default();
        let user = instruction("USER");
        p.check(user == [format!("{uid}:{uid}")], || {
            format!("Dockerfile: USER {user:?} is not the Deployment's runAsUser {uid}")
        });
        p
    }
}

#[test]
fn the_compose_example_and_the_dockerfile_agree_with_the_binary() {
    Compose::load().check().assert_none();
}

/// Each check can fail: one edit at a time, as a hurried operator would make it.
#[test]
fn a_broken_example_fails_the_checks() {
    let k8s = Kubernetes::load();
    for (file, from, to, expected) in [
        (
            "deployment.yaml",
            "port: admin",
            "port: https",
            "livenessProbe port",
        ),
        (
            "deployment.yaml",
            "path: /readyz",
            "path: /ready",
            "readinessProbe path",
        ),
        ("deployment.yaml", "replicas: 2", "replicas: 1", "replicas"),
        (
            "deployment.yaml",
            "mountPath: /etc/kestra-edge/config",
            "mountPath: /etc/kestra-edge/conf",
            "--config",
        ),
        (
            "deployment.yaml",
            "mountPath: /etc/kestra-edge/tls",
            "mountPath: /etc/kestra-edge/certs",
            "tls_cert",
        ),
        (
            "deployment.yaml",
            "containerPort: 9100",
            "containerPort: 9200",
            "containerPorts",
        ),
        (
            "deployment.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem",
        ),
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 40",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds",
        ),
        (
            "configmap.yaml",
            "admin_listen = \"0.0.0.0:9100\"",
            "admin_listen = \"0.0.0.0:9200\"",
            "livenessProbe port",
        ),
        (
            "configmap.yaml",
            "admin_listen = \"0.0.0.0:9100\"",
            "admin_listen = \"127.0.0.1:9100\"",
            "admin_listen 127.0.0.1:9100",
        ),
        (
            "configmap.yaml",
            "listen = \"0.0.0.0:8443\"",
            "listen = \"0.0.0.0:8444\"",
            "containerPorts",
        ),
        (
            "configmap.yaml",
            "health_port = 8081",
            "health_port_ = 8081",
            "unknown keys",
        ),
        (
            "service.yaml",
            "targetPort: https",
            "targetPort: admin",
            "service.yaml",
        ),
        (
            "kestra-webserver-headless.yaml",
            "targetPort: 8081",
            "targetPort: 8082",
            "health_port",
        ),
        (
            "kestra-webserver-headless.yaml",
            "name: kestra-webserver-headless",
            "name: kestra-web",
            "upstream",
        ),
        (
            "kustomization.yaml",
            "  - service.yaml\n",
            "",
            "kustomization.yaml",
        ),
    ] {
        let (problems, _) = k8s.broken(file, from, to).check();
        problems.assert_mentions(&format!("{file}: {from} -> {to}"), expected);
    }

    let compose = Compose::load();
    for (file, from, to, expected) in [
        (
            "docker-compose.yml",
            "\"8080:8000\"",
            "\"8081:8000\"",
            "kestra.url",
        ),
        (
            "docker-compose.yml",
            "context-path: /kestra",
            "context-path: /",
            "context-path",
        ),
        (
            "docker-compose.yml",
            "url: http://localhost:8080/kestra/",
            "url: http://localhost:8080/kestra",
            "kestra.url",
        ),
        (
            "docker-compose.yml",
            "\"127.0.0.1:9100:9100\"",
            "\"9100:9100\"",
            "admin port",
        ),
        (
            "docker-compose.yml",
            "./kestra-edge.toml:/etc/kestra-edge/kestra-edge.toml",
            "./kestra-edge.toml:/etc/kestra-edge.toml",
            "not mounted",
        ),
        (
            "kestra-edge.toml",
            "upstream = \"http://kestra:8080\"",
            "upstream = \"http://kestra:8081\"",
            "upstream",
        ),
        (
            "kestra-edge.toml",
            "listen = \"0.0.0.0:8000\"",
            "listen = \"0.0.0.0:8001\"",
            "not published",
        ),
        ("Dockerfile", "EXPOSE 8000 9100", "EXPOSE 8080", "EXPOSE"),
        ("Dockerfile", "USER 65532:65532", "USER nonroot", "USER"),
        (
            "Dockerfile",
            "CMD [\"--config\", \"/etc/kestra-edge/kestra-edge.toml\"]",
            "CMD [\"--config\", \"/etc/kestra-edge.toml\"]",
            "CMD",
        ),
    ] {
        compose
            .broken(file, from, to)
            .check()
            .assert_mentions(&format!("{file}: {from} -> {to}"), expected);
    }
}
