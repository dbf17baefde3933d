//! Checks `docker-compose.yml` as far as a machine without a Docker engine can: the
//! wiring a user relies on, and that the bridge accepts the settings it is given.

use clap::{CommandFactory, Parser};
use tidemark_bridge::config::{Cli, Config};
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml");
    YamlLoader::load_from_str(&text)
        .expect("docker-compose.yml is YAML")
        .into_iter()
        .next()
        .expect("one document")
}

/// A scalar as compose reads it (numbers and booleans are strings in `environment`).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The strings of a list, or of a string.
fn words(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

#[test]
fn every_service_has_a_healthcheck_and_the_bridge_waits_for_healthy_dependencies() {
    let doc = compose();
    let services = &doc["services"];
    for name in ["postgres", "kafka", "bridge"] {
        assert!(
            !words(&services[name]["healthcheck"]["test"]).is_empty(),
            "service {name} has no healthcheck"
        );
    }
    for dep in ["postgres", "kafka"] {
        assert_eq!(
            services["bridge"]["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "the bridge must wait for {dep} to be healthy"
        );
    }
    let pg_command = words(&services["postgres"]["command"]).join(" ");
    assert!(
        pg_command.contains("wal_level=logical"),
        "PostgreSQL must run with wal_level=logical: {pg_command}"
    );
    assert_eq!(
        scalar(&services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]).as_deref(),
        Some("broker,controller"),
        "Kafka runs as a single KRaft node"
    );
    assert!(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).exists(),
        "the bridge is built from the repository's Dockerfile"
    );
}

#[test]
fn the_bridge_accepts_the_settings_compose_gives_it() {
    let doc = compose();
    let bridge = &doc["services"]["bridge"];
    let env = bridge["environment"].as_hash().expect("bridge environment");
    // Turn each TIDEMARK_* variable into the flag that reads it, and parse as the bridge does.
    let cli = Cli::command();
    let mut args = vec!["tidemark-bridge".to_owned()];
    for (k, v) in env {
        let (Some(k), Some(v)) = (k.as_str(), scalar(v)) else {
            panic!("environment entries must be scalars: {k:?}")
        };
        if !k.starts_with("TIDEMARK_") {
            continue;
        }
        let arg = cli
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == k))
            .unwrap_or_else(|| panic!("the bridge reads no variable {k}"));
        args.push(format!("--{}={v}", arg.get_long().expect("long flag")));
    }
    let parsed = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let config = Config::from_cli(parsed).unwrap_or_else(|e| panic!("{args:?}: {e}"));

    // The bridge reaches Kafka on a listener the broker advertises.
    let advertised = scalar(&doc["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
        .expect("advertised listeners");
    for server in config.kafka.split(',') {
        assert!(
            advertised
                .split(',')
                .any(|l| l.ends_with(&format!("://{server}"))),
            "{server} is not among the advertised listeners {advertised}"
        );
    }
    // Its healthcheck asks the HTTP port the bridge serves.
    let http = config.http.expect("the compose bridge serves HTTP");
    let check = words(&bridge["healthcheck"]["test"]).join(" ");
    assert!(
        check.contains(&format!(":{}/readyz", http.port())),
        "the healthcheck {check:?} does not ask /readyz on port {}",
        http.port()
    );
}

/// The Apache Kafka version of the development stack (`KAFKA_VERSION` in
/// `scripts/dev-stack.sh`, the `kafka.version` of `scripts/kafka/pom.xml`) and of the
/// compose file's image are one version.
#[test]
fn compose_and_the_development_stack_run_the_same_kafka() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).expect(p);
    let script = read("scripts/dev-stack.sh");
    let stack = script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .expect("KAFKA_VERSION= in scripts/dev-stack.sh");
    let pom = read("scripts/kafka/pom.xml");
    let pom_version = pom
        .split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(v, _)| v)
        .expect("<kafka.version> in scripts/kafka/pom.xml");
    let image = scalar(&compose()["services"]["kafka"]["image"]).expect("kafka image");
    assert_eq!(pom_version, stack, "scripts/kafka/pom.xml and dev-stack.sh");
    assert_eq!(image, format!("apache/kafka:{stack}"), "docker-compose.yml");
}
