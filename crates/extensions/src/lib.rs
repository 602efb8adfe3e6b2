//! bizpilot extensions: shared services other components look up by id
//! through `CreateContext::extensions`.
//!
//! - [`business_state`]: the keyed business state (orders, customers) written by the
//!   `business_events` exporter and read by the `enrich` processor;
//! - [`lookup`]: a reference table from a CSV/JSON/YAML file, reloaded when it changes;
//! - [`health_check`]: the HTTP liveness/readiness endpoint for probes (`:13133`);
//! - [`file_storage`]: durable storage (a local redb file) in which stateful components
//!   checkpoint their state and from which they restore it at start.
#![forbid(unsafe_code)]

pub mod business_state;
pub mod file_storage;
pub mod health_check;
pub mod lookup;

pub use business_state::{BusinessStateConfig, BusinessStateExtension, BusinessStateExtensionFactory};
pub use file_storage::{FileStorageConfig, FileStorageExtension, FileStorageExtensionFactory};
pub use health_check::{HealthCheckConfig, HealthCheckExtension, HealthCheckExtensionFactory};
pub use lookup::{LookupConfig, LookupExtension, LookupExtensionFactory};

use bizpilot_core::Registry;

/// Registers every extension of this crate.
pub fn register(r: &mut Registry) {
    r.extension(BusinessStateExtensionFactory);
    r.extension(LookupExtensionFactory);
    r.extension(HealthCheckExtensionFactory);
    r.extension(FileStorageExtensionFactory);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::{BusinessEvent, BusinessState, Lookup};
    use bizpilot_core::{Built, ComponentId, ComponentKind, CreateContext, ExtensionContext, Extensions};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn start(yaml: &str, id: &str) -> (Extensions, bizpilot_core::Running, CancellationToken) {
        start_with(yaml, id, Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    fn start_with(
        yaml: &str,
        id: &str,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> (Extensions, bizpilot_core::Running, CancellationToken) {
        let mut r = Registry::new();
        register(&mut r);
        let id: ComponentId = id.parse().unwrap();
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let empty = Extensions::default();
        let ctx = CreateContext {
            id: &id,
            pipeline: None,
            signals: BTreeSet::new(),
            output_signals: BTreeSet::new(),
            extensions: &empty,
        };
        let f = r.get(ComponentKind::Extension, id.type_name()).unwrap();
        let Ok(Built::Extension(ext)) = f.build(&raw, &ctx) else {
            panic!("not built")
        };
        let shutdown = CancellationToken::new();
        let running = ext
            .clone()
            .start(ExtensionContext {
                id: id.clone(),
                shutdown: shutdown.clone(),
                ready,
            })
            .unwrap();
        let mut exts = Extensions::default();
        exts.insert(id, ext.shared());
        (exts, running, shutdown)
    }

    #[test]
    fn configs_validate() {
        let mut r = Registry::new();
        register(&mut r);
        let check = |kind, t: &str, yaml: &str| {
            let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            r.get(kind, t).unwrap().check(&raw)
        };
        assert!(check(ComponentKind::Extension, "business_state", "null").is_ok());
        let errs = check(
            ComponentKind::Extension,
            "business_state",
            "{max_orders: 0, max_customers: 0}",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2);
        let errs = check(ComponentKind::Extension, "business_state", "{max_order: 5}").unwrap_err();
        assert!(errs[0].message.contains("unknown field"), "{errs:?}");
        let errs = check(ComponentKind::Extension, "lookup", "null").unwrap_err();
        assert_eq!(
            errs.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["file", "key"]
        );
        let errs = check(ComponentKind::Extension, "lookup", "{file: t.txt, key: id}").unwrap_err();
        assert_eq!(errs[0].path, "format");
        assert!(
            check(
                ComponentKind::Extension,
                "lookup",
                "{file: t.txt, key: id, format: csv}"
            )
            .is_ok()
        );
        let errs = check(
            ComponentKind::Extension,
            "lookup",
            "{file: t.txt, key: id, format: xml}",
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "format");
    }

    #[tokio::test]
    async fn business_state_is_shared_and_purged() {
        let (exts, mut running, shutdown) = start("{ttl: 100ms, purge_interval: 20ms}", "business_state");
        let id: ComponentId = "business_state".parse().unwrap();
        let st = exts.get::<BusinessState>(&id).unwrap();
        let mut ev = BusinessEvent::new("order.placed", 1);
        ev.order_id = Some("o1".into());
        st.apply(&ev);
        assert!(st.order("o1").is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(st.orders.len(), 0, "purged in the background");
        assert_eq!(st.orders.stats().expirations, 1);
        assert!(exts.get::<Lookup>(&id).is_err(), "wrong type is refused");
        shutdown.cancel();
        running.join().await.unwrap();
    }

    #[tokio::test]
    async fn a_changelog_attached_after_the_start_gets_every_checkpoint() {
        use bizpilot_business::changelog::{MemoryChangelog, partition_of};
        let (exts, mut running, shutdown) = start("{checkpoint_interval: 20ms}", "business_state");
        let st = exts.get::<BusinessState>(&"business_state".parse().unwrap()).unwrap();
        let log = Arc::new(MemoryChangelog::new(3));
        assert!(st.attach_changelog(log.clone()));
        let mut ev = BusinessEvent::new("order.placed", 1);
        ev.order_id = Some("o1".into());
        st.apply(&ev);
        let epoch = st.change_epoch();
        tokio::time::timeout(Duration::from_secs(5), st.wait_durable(epoch))
            .await
            .expect("durable once the changelog has it");
        let records = log.read(partition_of("o1", 3));
        assert!(records.iter().any(|(k, v)| k == b"o/o1" && v.is_some()), "{records:?}");
        shutdown.cancel();
        running.join().await.unwrap();
    }

    #[tokio::test]
    async fn lookup_reloads_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiers.json");
        std::fs::write(&path, r#"[{"id": "c1", "tier": "gold"}]"#).unwrap();
        let yaml = format!("{{file: {}, key: id, reload_interval: 50ms}}", path.display());
        let (exts, mut running, shutdown) = start(&yaml, "lookup/tiers");
        let l: Arc<Lookup> = exts.get::<Lookup>(&"lookup/tiers".parse().unwrap()).unwrap();
        assert_eq!(l.name(), "lookup/tiers");
        assert_eq!(l.table().len(), 1);
        std::fs::write(
            &path,
            r#"[{"id": "c1", "tier": "silver"}, {"id": "c2", "tier": "gold"}]"#,
        )
        .unwrap();
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if l.table().len() == 2 {
                ok = true;
                break;
            }
        }
        assert!(ok, "reloaded within 2s");
        assert_eq!(l.table().get("c1").unwrap().get("tier").unwrap().as_str(), "silver");
        shutdown.cancel();
        running.join().await.unwrap();
    }

    #[test]
    fn lookup_refuses_to_start_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "- id: a\n- tier: x\n").unwrap();
        let cfg = LookupConfig {
            file: path.clone(),
            key: "id".into(),
            ..Default::default()
        };
        let Err(e) = LookupExtension::open("lookup", &cfg) else {
            panic!("must fail")
        };
        assert!(e.to_string().contains("bad.yaml:2"), "{e}");
    }

    /// One HTTP/1.0 GET; returns the status code and body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn health_check_follows_readiness() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (exts, mut running, shutdown) = start_with(
            "{endpoint: '127.0.0.1:0', path: /health}",
            "health_check",
            ready.clone(),
        );
        let id: ComponentId = "health_check".parse().unwrap();
        let addr = exts.get::<HealthCheckExtension>(&id).unwrap().local_addr().unwrap();
        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("Server not available"), "{body}");
        ready.store(true, std::sync::atomic::Ordering::Release);
        let (status, body) = get(addr, "/health").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Server available"), "{body}");
        assert_eq!(get(addr, "/").await.0, 404);
        assert_eq!(get(addr, "/api/v1/impact").await.0, 404);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), running.join())
            .await
            .expect("stops on shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[test]
    fn health_check_config() {
        let mut r = Registry::new();
        register(&mut r);
        let check = |yaml: &str| {
            let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            r.get(ComponentKind::Extension, "health_check").unwrap().check(&raw)
        };
        assert!(check("null").is_ok());
        assert!(check("{endpoint: '0.0.0.0:13133', path: /healthz}").is_ok());
        let errs = check("{endpoint: 'http://0.0.0.0:13133', path: healthz}").unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["endpoint", "path"], "{errs:?}");
        assert!(check("{endpoint: '0.0.0.0:13133', check_collector_pipeline: {}}").is_err());
    }
}
