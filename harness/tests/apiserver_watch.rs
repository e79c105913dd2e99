//! Watch protocol details: streaming lists (sendInitialEvents), bookmarks, timeoutSeconds,
//! selector transitions reported as ADDED/DELETED, and the events.k8s.io Recorder.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use lodestone_harness::apiserver::{Server, ServerConfig};
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn next<S, T>(s: &mut S) -> T
where
    S: futures::Stream<Item = T> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("item within 20s")
        .expect("stream open")
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_state_then_changes() {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &cm("pre", &[]))
        .await
        .unwrap();
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = watcher(api.clone(), cfg).boxed();
    let mut initial = Vec::new();
    loop {
        match next(&mut w).await.unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => initial.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected before InitDone: {other:?}"),
        }
    }
    assert_eq!(initial, vec!["pre"]);
    api.create(&PostParams::default(), &cm("post", &[]))
        .await
        .unwrap();
    match next(&mut w).await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "post"),
        other => panic!("expected Apply(post), got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let s = Server::start(ServerConfig {
        bookmark_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let created_rv: u64 = created.resource_version().unwrap().parse().unwrap();
    let mut saw_added = false;
    loop {
        match next(&mut w).await.unwrap() {
            WatchEvent::Added(o) => {
                assert_eq!(o.name_any(), "a");
                saw_added = true;
            }
            WatchEvent::Bookmark(b) => {
                let brv: u64 = b.metadata.resource_version.parse().unwrap();
                if saw_added {
                    assert!(brv >= created_rv);
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds() {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    // The server closes the stream by itself; the generous bound only guards against a hang.
    let end = tokio::time::timeout(Duration::from_secs(30), w.try_next())
        .await
        .expect("stream closed by the server");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn label_selector_transitions_are_added_and_deleted() {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().labels("app=web"), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("x", &[("app", "db")]))
        .await
        .unwrap();
    let set = |v: &str| json!({"metadata": {"labels": {"app": v}}});
    api.patch("x", &PatchParams::default(), &Patch::Merge(&set("web")))
        .await
        .unwrap();
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    api.patch("x", &PatchParams::default(), &Patch::Merge(&set("db")))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("marker", &[("app", "web")]))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match next(&mut w).await.unwrap() {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec!["ADDED x", "MODIFIED x", "DELETED x", "ADDED marker"]
    );
}

#[tokio::test]
async fn event_recorder_creates_and_patches_events() {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let client = s.client().await.unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "lodestone-test".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "NoPool".into(),
        note: Some("no pool serves this Service".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client, "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("NoPool"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test]
async fn restart_cuts_watches_and_resource_versions_continue() {
    let mut s = Server::start(ServerConfig::default()).await.unwrap();
    let client = s.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let before = api
        .create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    let url_before = s.url();
    let mut w = api
        .watch(&WatchParams::default(), &before.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    s.restart().await.unwrap();
    assert_eq!(s.url(), url_before, "same port after restart");
    // The open watch is cut by the server: the stream ends or fails, it does not hang.
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match w.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                Some(Ok(other)) => panic!("no change happened, got {other:?}"),
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "watch was cut by the restart");
    let mut after = None;
    for _ in 0..100 {
        if let Ok(o) = api.create(&PostParams::default(), &cm("after", &[])).await {
            after = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("server reachable after restart");
    let rv = |o: &ConfigMap| o.resource_version().unwrap().parse::<u64>().unwrap();
    assert!(rv(&after) > rv(&before));
    // The history survived too: a watch from before the restart replays the later create.
    let mut w = api
        .watch(&WatchParams::default(), &before.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    loop {
        match next(&mut w).await.unwrap() {
            WatchEvent::Added(o) => {
                assert_eq!(o.name_any(), "after");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn metadata_only_get_list_and_watch() {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &cm("m", &[("k", "v")]))
        .await
        .unwrap();
    let meta = api.get_metadata("m").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["k"], "v");
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let meta_api: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(s.client().await.unwrap(), "default");
    let mut w = watcher(meta_api, watcher::Config::default()).boxed();
    loop {
        match next(&mut w).await.unwrap() {
            watcher::Event::InitApply(o) => assert_eq!(o.name_any(), "m"),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    api.delete("m", &Default::default()).await.unwrap();
    loop {
        if let watcher::Event::Delete(o) = next(&mut w).await.unwrap() {
            assert_eq!(o.name_any(), "m");
            break;
        }
    }
}
