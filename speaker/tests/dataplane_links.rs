//! The live link view against the real kernel: links and addresses appearing, changing and
//! vanishing in a namespace are noticed through rtnetlink notifications.

use std::sync::Arc;
use std::time::Duration;

use lodestone_harness::netns::Netns;
use lodestone_speaker::interfaces::{LinkInfo, watch_links};
use tokio::sync::watch;

/// Waits until the snapshot satisfies `pred`. The resync interval is an hour, so only
/// notifications can make this pass.
async fn until(
    rx: &mut watch::Receiver<Arc<Vec<LinkInfo>>>,
    what: &str,
    pred: impl Fn(&[LinkInfo]) -> bool,
) {
    let wait = async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

fn find<'a>(links: &'a [LinkInfo], name: &str) -> Option<&'a LinkInfo> {
    links.iter().find(|l| l.name == name)
}

#[test]
fn link_view_follows_the_kernel() {
    let ns = Netns::new("ldl").unwrap();
    let ip = |args: &[&str]| {
        ns.exec_ok("ip", args).unwrap();
    };
    ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let watcher = watch_links(Duration::from_secs(3600)).await.unwrap();
            let mut rx = watcher.subscribe();
            let initial = watcher.current();
            let lo = find(&initial, "lo").expect("loopback in the initial dump");
            assert!(lo.mac.is_none() && !lo.broadcast);
            assert!(find(&initial, "eth7").is_none());

            ip(&[
                "link", "add", "eth7", "type", "veth", "peer", "name", "eth7p",
            ]);
            until(&mut rx, "eth7 appears, down", |l| {
                find(l, "eth7").is_some_and(|e| !e.up && e.mac.is_some() && e.broadcast)
            })
            .await;

            // Administratively up is not enough: a veth has carrier only once its peer is up.
            ip(&["link", "set", "eth7", "up"]);
            ip(&["link", "set", "eth7p", "up"]);
            until(&mut rx, "eth7 up with carrier", |l| {
                find(l, "eth7").is_some_and(|e| e.up)
            })
            .await;

            ip(&["addr", "add", "192.0.2.7/24", "dev", "eth7"]);
            ip(&["addr", "add", "2001:db8::7/64", "dev", "eth7", "nodad"]);
            until(&mut rx, "addresses on eth7", |l| {
                find(l, "eth7").is_some_and(|e| {
                    let a: Vec<String> = e.addrs.iter().map(|n| n.to_string()).collect();
                    a.contains(&"192.0.2.7/24".into()) && a.contains(&"2001:db8::7/64".into())
                })
            })
            .await;

            ip(&["link", "add", "br7", "type", "bridge"]);
            ip(&["link", "set", "eth7p", "master", "br7"]);
            until(&mut rx, "eth7p is a bridge port", |l| {
                find(l, "eth7p").is_some_and(|e| e.master_is_bridge)
                    && find(l, "br7").is_some_and(|b| !b.master_is_bridge)
            })
            .await;

            ip(&["addr", "del", "192.0.2.7/24", "dev", "eth7"]);
            until(&mut rx, "IPv4 address removed", |l| {
                find(l, "eth7")
                    .is_some_and(|e| e.addrs.iter().all(|n| n.to_string() != "192.0.2.7/24"))
            })
            .await;

            ip(&["link", "del", "eth7"]);
            until(&mut rx, "eth7 and its peer vanish", |l| {
                find(l, "eth7").is_none() && find(l, "eth7p").is_none()
            })
            .await;
        });
    })
    .unwrap();
}
