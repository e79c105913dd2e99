//! Conformance, written from the Kubernetes API concepts ("Efficient detection of changes",
//! "Resource versions", "Watch bookmarks"), not from the embedded server's code. Only
//! `TestCluster` and kube's client are used, so with `TEST_ASSET_KUBE_APISERVER` and
//! `TEST_ASSET_ETCD` set the same tests run against a real kube-apiserver.
//!
//! Resource versions are opaque: these tests only compare them for equality and only use them
//! as watch starting points, as clients are told to.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use lodestone_harness::cluster::TestCluster;

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

/// (type, name, resourceVersion) of a non-bookmark event; bookmarks are skipped.
async fn next_change<S>(w: &mut S) -> (&'static str, String, String)
where
    S: Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("a watch event within 30s")
            .expect("watch stream open")
            .expect("watch event decodes");
        let (t, o) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        return (t, o.name_any(), o.resource_version().unwrap_or_default());
    }
}

async fn list_rv(api: &Api<ConfigMap>) -> String {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

/// Sequential writes to many objects: a watch from before them sees every write once, in the
/// order they were committed, each carrying the resourceVersion the write returned. Then a watch
/// resumed from *any* of those resourceVersions continues with exactly the writes after it.
#[tokio::test]
async fn watch_delivers_commit_order_and_resumes_from_every_seen_version() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let start = list_rv(&api).await;
    let mut w = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();

    // Interleave objects so that per-object order alone would not explain the sequence.
    let mut writes: Vec<(&'static str, String, String)> = Vec::new();
    for round in 0..4 {
        for i in 0..6 {
            let name = format!("obj-{i}");
            let rv = if round == 0 {
                let o = api
                    .create(&PostParams::default(), &cm(&name, "0"))
                    .await
                    .unwrap();
                writes.push(("ADDED", name, o.resource_version().unwrap()));
                continue;
            } else if round == 3 && i % 2 == 0 {
                let out = api.delete(&name, &DeleteParams::default()).await.unwrap();
                // Without finalizers the object is gone at once and the reply is a Success
                // Status naming it (kube-apiserver's finalizeDelete); the DELETED event carries
                // the deletion's resourceVersion, which the reply does not reveal.
                let status = out.right().expect("a Status, not the object");
                let details = status.details.expect("Status.details");
                assert_eq!(
                    (details.name.as_str(), details.kind.as_str()),
                    (name.as_str(), "configmaps")
                );
                writes.push(("DELETED", name, String::new()));
                continue;
            } else {
                let mut o = api.get(&name).await.unwrap();
                o.data = Some(BTreeMap::from([("v".to_string(), round.to_string())]));
                api.replace(&name, &PostParams::default(), &o)
                    .await
                    .unwrap()
                    .resource_version()
                    .unwrap()
            };
            writes.push(("MODIFIED", name, rv));
        }
    }
    let mut seen = Vec::new();
    for want in &writes {
        let got = next_change(&mut w).await;
        assert_eq!(
            (got.0, &got.1),
            (want.0, &want.1),
            "event {} of {:?}",
            seen.len(),
            writes
        );
        if !want.2.is_empty() {
            assert_eq!(
                got.2, want.2,
                "the event carries the write's resourceVersion"
            );
        }
        seen.push(got);
    }
    // All resourceVersions differ: one per committed change.
    let mut rvs: Vec<&String> = seen.iter().map(|e| &e.2).collect();
    rvs.sort();
    rvs.dedup();
    assert_eq!(rvs.len(), seen.len());

    // Resume from every seen resourceVersion: the next event is the following write.
    for (i, (_, _, rv)) in seen.iter().enumerate().take(seen.len() - 1) {
        let mut r = api
            .watch(&WatchParams::default(), rv)
            .await
            .unwrap()
            .boxed();
        let got = next_change(&mut r).await;
        assert_eq!(got, seen[i + 1], "resuming from event {i} ({rv})");
    }
    // From the last one, the next event is a write made after the watch began.
    let last = &seen[seen.len() - 1].2;
    let mut r = api
        .watch(&WatchParams::default(), last)
        .await
        .unwrap()
        .boxed();
    let o = api
        .create(&PostParams::default(), &cm("after", "x"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut r).await,
        ("ADDED", "after".to_string(), o.resource_version().unwrap())
    );
}

/// Writes from concurrent clients: however they interleave, the watch reports each write exactly
/// once with the write's resourceVersion, and each object's writes in their own order.
#[tokio::test]
async fn concurrent_writers_each_write_seen_once_in_per_object_order() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let start = list_rv(&api).await;
    let mut w = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    let tasks: Vec<_> = (0..5)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                let name = format!("writer-{t}");
                let mut rvs = Vec::new();
                let o = api
                    .create(&PostParams::default(), &cm(&name, "0"))
                    .await
                    .unwrap();
                rvs.push(o.resource_version().unwrap());
                for n in 1..5 {
                    let mut o = api.get(&name).await.unwrap();
                    o.data = Some(BTreeMap::from([("v".to_string(), n.to_string())]));
                    let o = api
                        .replace(&name, &PostParams::default(), &o)
                        .await
                        .unwrap();
                    rvs.push(o.resource_version().unwrap());
                }
                (name, rvs)
            })
        })
        .collect();
    let mut expected = BTreeMap::new();
    for t in tasks {
        let (name, rvs) = t.await.unwrap();
        expected.insert(name, rvs);
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..25 {
        let (_, name, rv) = next_change(&mut w).await;
        got.entry(name).or_default().push(rv);
    }
    assert_eq!(got, expected);
}

/// "Watch bookmarks": asked for with `sendInitialEvents`, the server sends the current objects,
/// then a BOOKMARK annotated `k8s.io/initial-events-end: "true"` whose resourceVersion is a valid
/// starting point: a watch from it sees only later changes.
#[tokio::test]
async fn initial_events_end_with_a_bookmark_to_resume_from() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(n, n)).await.unwrap();
    }
    let mut w = api
        .watch(&WatchParams::default().initial_events(), "0")
        .await
        .unwrap()
        .boxed();
    let mut initial = Vec::new();
    let bookmark_rv = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("event within 30s")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => initial.push(o.name_any()),
            WatchEvent::Bookmark(b) => {
                if b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str)
                    == Some("true")
                {
                    break b.metadata.resource_version;
                }
            }
            other => panic!("unexpected during initial events: {other:?}"),
        }
    };
    initial.sort();
    // On a real cluster kube-root-ca.crt would be here too, but only kube-controller-manager
    // creates it, and none runs.
    assert_eq!(initial, ["a", "b", "c"]);
    assert!(!bookmark_rv.is_empty());
    let mut r = api
        .watch(&WatchParams::default(), &bookmark_rv)
        .await
        .unwrap()
        .boxed();
    let d = api
        .create(&PostParams::default(), &cm("d", "d"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut r).await,
        ("ADDED", "d".to_string(), d.resource_version().unwrap())
    );
}

/// Asked for with `allowWatchBookmarks`, bookmarks arrive, name the watched kind, and carry a
/// resourceVersion a watch may resume from. Embedded only: a real kube-apiserver sends
/// periodic bookmarks about once a minute, too slow for a test.
#[tokio::test]
async fn periodic_bookmarks_are_resumable() {
    let c = TestCluster::start().await.unwrap();
    if !c.is_embedded() {
        eprintln!("SKIP on a real kube-apiserver: periodic bookmarks come about once a minute");
        return;
    }
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let start = list_rv(&api).await;
    api.create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap();
    let mut w = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &start,
        )
        .await
        .unwrap()
        .boxed();
    let bookmark = loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), w.next())
            .await
            .expect("a bookmark within 60s")
            .unwrap()
            .unwrap();
        if let WatchEvent::Bookmark(b) = ev {
            break b;
        }
    };
    assert_eq!(bookmark.types.kind, "ConfigMap");
    let mut r = api
        .watch(&WatchParams::default(), &bookmark.metadata.resource_version)
        .await
        .unwrap()
        .boxed();
    let y = api
        .create(&PostParams::default(), &cm("y", "1"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut r).await,
        ("ADDED", "y".to_string(), y.resource_version().unwrap())
    );
}

/// "410 Gone": a watch from a resourceVersion older than the server retains ends with an ERROR
/// event of code 410, reason Expired. Only the embedded server can be made to compact on demand.
#[tokio::test]
async fn watch_from_a_compacted_version_gets_410_expired() {
    let c = TestCluster::start().await.unwrap();
    let Some(server) = c.server() else {
        eprintln!("SKIP on a real kube-apiserver: compaction cannot be forced");
        return;
    };
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let first = api
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    server.compact();
    let mut w = api
        .watch(&WatchParams::default(), &first.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    // The documented recovery: list again and watch from the list's resourceVersion.
    let rv = list_rv(&api).await;
    let mut r = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let c2 = api
        .create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut r).await,
        ("ADDED", "c".to_string(), c2.resource_version().unwrap())
    );
}
