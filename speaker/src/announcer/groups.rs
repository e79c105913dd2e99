//! The solicited-node group memberships of one interface, spread over as many sockets as the
//! kernel needs.
//!
//! Linux charges each multicast membership of a socket (a `struct ipv6_mc_socklist`, 56 bytes
//! on 64-bit kernels) to that socket's option memory, capped by `net.core.optmem_max`; past
//! the cap a join fails with `ENOMEM`. One socket holds 2,340 groups at the 128 KiB default of
//! current kernels and 365 at the 20 KiB default of older ones. So the memberships live on
//! membership-only sockets ([`GroupSocket`]), and a new one is opened whenever the ones open
//! are full. A membership on any socket makes the interface accept the group; the NDP socket,
//! bound to the device with no address, then receives the solicitations sent to it.
//!
//! Several addresses can share one group (it keeps only their low 24 bits): a group is joined
//! once, when the first address needing it appears, and left when the last one goes.
//!
//! The bookkeeping is generic over the socket so that it is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv6Addr;

use crate::frames::solicited_node_multicast;
use crate::sys::{GroupSocket, is_membership_full};

/// A socket that can hold multicast memberships on one interface.
pub(crate) trait Membership {
    /// Joins `group`.
    fn join(&self, group: Ipv6Addr) -> io::Result<()>;
    /// Leaves `group`.
    fn leave(&self, group: Ipv6Addr) -> io::Result<()>;
}

impl Membership for GroupSocket {
    fn join(&self, group: Ipv6Addr) -> io::Result<()> {
        GroupSocket::join(self, group)
    }
    fn leave(&self, group: Ipv6Addr) -> io::Result<()> {
        GroupSocket::leave(self, group)
    }
}

/// A group that could not be joined: NDP for `addresses` goes unanswered until a later
/// [`Groups::sync`] succeeds.
#[derive(Debug)]
pub(crate) struct JoinFailure {
    pub(crate) group: Ipv6Addr,
    pub(crate) addresses: Vec<Ipv6Addr>,
    pub(crate) error: io::Error,
}

/// What one [`Groups::sync`] did.
#[derive(Debug, Default)]
pub(crate) struct SyncReport {
    pub(crate) join_failures: Vec<JoinFailure>,
    /// Groups whose leave failed (they are forgotten anyway; the socket keeps them until it
    /// closes).
    pub(crate) leave_failures: Vec<(Ipv6Addr, io::Error)>,
}

#[derive(Debug)]
struct Slot<S> {
    socket: S,
    members: usize,
    /// A join failed for lack of option memory; cleared when a leave frees some.
    full: bool,
}

/// Reference-counted group memberships of one interface over a growing set of sockets.
#[derive(Debug)]
pub(crate) struct Groups<S> {
    /// Each needed group with the addresses that need it (the reference count).
    needed: BTreeMap<Ipv6Addr, BTreeSet<Ipv6Addr>>,
    /// The slot holding each joined group. A needed group missing here failed to join and is
    /// tried again on the next sync.
    held: BTreeMap<Ipv6Addr, u64>,
    slots: BTreeMap<u64, Slot<S>>,
    next_slot: u64,
}

impl<S> Default for Groups<S> {
    fn default() -> Self {
        Groups {
            needed: BTreeMap::new(),
            held: BTreeMap::new(),
            slots: BTreeMap::new(),
            next_slot: 0,
        }
    }
}

/// A copy of an error for reporting it once per group (io::Error is not Clone).
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl<S: Membership> Groups<S> {
    /// Makes the memberships those of `addresses`: leaves the groups no address needs any
    /// more, then joins the missing ones (including earlier failures), opening sockets with
    /// `open` when those open are full.
    pub(crate) fn sync(
        &mut self,
        addresses: impl IntoIterator<Item = Ipv6Addr>,
        mut open: impl FnMut() -> io::Result<S>,
    ) -> SyncReport {
        let mut needed: BTreeMap<Ipv6Addr, BTreeSet<Ipv6Addr>> = BTreeMap::new();
        for address in addresses {
            needed
                .entry(solicited_node_multicast(address))
                .or_default()
                .insert(address);
        }
        let mut report = SyncReport::default();
        // Leaves first: they free room for the joins.
        let unneeded: Vec<Ipv6Addr> = self
            .held
            .keys()
            .filter(|g| !needed.contains_key(g))
            .copied()
            .collect();
        for group in unneeded {
            self.release(group, &mut report);
        }
        self.needed = needed;
        let missing: Vec<Ipv6Addr> = self
            .needed
            .keys()
            .filter(|g| !self.held.contains_key(g))
            .copied()
            .collect();
        // Once a fresh socket cannot join (or none can be opened), more sockets will not help
        // during this sync: report the rest without trying.
        let mut stuck: Option<io::Error> = None;
        for group in missing {
            if let Err(error) = self.acquire(group, &mut open, &mut stuck) {
                let addresses = self
                    .needed
                    .get(&group)
                    .map(|a| a.iter().copied().collect())
                    .unwrap_or_default();
                report.join_failures.push(JoinFailure {
                    group,
                    addresses,
                    error,
                });
            }
        }
        report
    }

    fn acquire(
        &mut self,
        group: Ipv6Addr,
        open: &mut impl FnMut() -> io::Result<S>,
        stuck: &mut Option<io::Error>,
    ) -> io::Result<()> {
        for (id, slot) in self.slots.iter_mut().filter(|(_, s)| !s.full) {
            match slot.socket.join(group) {
                Ok(()) => {
                    slot.members += 1;
                    self.held.insert(group, *id);
                    return Ok(());
                }
                Err(e) if is_membership_full(&e) => slot.full = true,
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = stuck {
            return Err(copy_error(e));
        }
        let fresh = open().and_then(|socket| socket.join(group).map(|()| socket));
        match fresh {
            Ok(socket) => {
                let id = self.next_slot;
                self.next_slot += 1;
                self.slots.insert(
                    id,
                    Slot {
                        socket,
                        members: 1,
                        full: false,
                    },
                );
                self.held.insert(group, id);
                Ok(())
            }
            Err(e) => {
                *stuck = Some(copy_error(&e));
                Err(e)
            }
        }
    }

    fn release(&mut self, group: Ipv6Addr, report: &mut SyncReport) {
        let Some(id) = self.held.remove(&group) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.members = slot.members.saturating_sub(1);
        slot.full = false;
        if slot.members == 0 {
            // Closing the socket leaves its last group.
            self.slots.remove(&id);
        } else if let Err(e) = slot.socket.leave(group) {
            report.leave_failures.push((group, e));
        }
    }

    /// Sockets open.
    pub(crate) fn sockets(&self) -> usize {
        self.slots.len()
    }

    /// Groups joined.
    pub(crate) fn joined(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The kernel as the fakes see it: the groups each socket holds; closed sockets vanish.
    #[derive(Debug, Default)]
    struct Kernel {
        sockets: BTreeMap<u32, BTreeSet<Ipv6Addr>>,
        next: u32,
        joins: usize,
        /// When set, joins fail with this errno (beyond the capacity rule).
        fail_with: Option<i32>,
    }

    impl Kernel {
        /// Groups held by at least one open socket: what the interface accepts.
        fn accepted(&self) -> BTreeSet<Ipv6Addr> {
            self.sockets.values().flatten().copied().collect()
        }
    }

    /// A socket holding at most `capacity` groups, like optmem_max does.
    #[derive(Debug)]
    struct FakeSocket {
        id: u32,
        capacity: usize,
        kernel: Rc<RefCell<Kernel>>,
    }

    impl Membership for FakeSocket {
        fn join(&self, group: Ipv6Addr) -> io::Result<()> {
            let mut k = self.kernel.borrow_mut();
            if let Some(code) = k.fail_with {
                return Err(io::Error::from_raw_os_error(code));
            }
            let held = k.sockets.entry(self.id).or_default();
            if held.contains(&group) {
                return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
            }
            if held.len() >= self.capacity {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            held.insert(group);
            k.joins += 1;
            Ok(())
        }
        fn leave(&self, group: Ipv6Addr) -> io::Result<()> {
            let mut k = self.kernel.borrow_mut();
            let left = k
                .sockets
                .get_mut(&self.id)
                .is_some_and(|held| held.remove(&group));
            if left {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL))
            }
        }
    }

    impl Drop for FakeSocket {
        fn drop(&mut self) {
            self.kernel.borrow_mut().sockets.remove(&self.id);
        }
    }

    fn opener(
        kernel: &Rc<RefCell<Kernel>>,
        capacity: usize,
    ) -> impl FnMut() -> io::Result<FakeSocket> + '_ {
        move || {
            let mut k = kernel.borrow_mut();
            let id = k.next;
            k.next += 1;
            k.sockets.insert(id, BTreeSet::new());
            Ok(FakeSocket {
                id,
                capacity,
                kernel: Rc::clone(kernel),
            })
        }
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// `n` addresses with distinct groups.
    fn distinct(n: u16) -> Vec<Ipv6Addr> {
        (0..n)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, i))
            .collect()
    }

    #[test]
    fn a_shared_group_is_joined_once_and_left_with_its_last_address() {
        let kernel = Rc::new(RefCell::new(Kernel::default()));
        let mut groups = Groups::default();
        // Same low 24 bits: one solicited-node group.
        let (a, b) = (v6("2001:db8::1:100"), v6("2001:db8:0:7::1:100"));
        let group = solicited_node_multicast(a);
        assert_eq!(group, solicited_node_multicast(b));

        let r = groups.sync([a, b], opener(&kernel, 10));
        assert!(r.join_failures.is_empty(), "{r:?}");
        assert_eq!(kernel.borrow().joins, 1);
        assert_eq!(kernel.borrow().accepted(), BTreeSet::from([group]));

        // One of the two goes: the other still needs the group.
        groups.sync([b], opener(&kernel, 10));
        assert_eq!(kernel.borrow().accepted(), BTreeSet::from([group]));
        assert_eq!(kernel.borrow().joins, 1, "no rejoin");

        // The address comes back: nothing to do.
        groups.sync([a, b], opener(&kernel, 10));
        assert_eq!(kernel.borrow().joins, 1);

        // The last one goes: the group is left (its socket closed).
        groups.sync([], opener(&kernel, 10));
        assert!(kernel.borrow().accepted().is_empty());
        assert_eq!(groups.sockets(), 0);
        assert_eq!(groups.joined(), 0);
    }

    #[test]
    fn memberships_spill_over_to_new_sockets_and_sockets_close_when_empty() {
        let kernel = Rc::new(RefCell::new(Kernel::default()));
        let mut groups = Groups::default();
        let all = distinct(10);
        let r = groups.sync(all.iter().copied(), opener(&kernel, 3));
        assert!(r.join_failures.is_empty(), "{r:?}");
        assert_eq!(groups.sockets(), 4); // 3 + 3 + 3 + 1
        let want: BTreeSet<Ipv6Addr> = all.iter().map(|a| solicited_node_multicast(*a)).collect();
        assert_eq!(kernel.borrow().accepted(), want);
        assert_eq!(kernel.borrow().joins, 10, "each group joined exactly once");

        // Dropping the first three empties the first socket: it is closed.
        groups.sync(all[3..].iter().copied(), opener(&kernel, 3));
        assert_eq!(groups.sockets(), 3);
        assert_eq!(kernel.borrow().sockets.len(), 3);
        // New groups fill the room freed before any new socket is opened.
        let more = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 2, 0);
        groups.sync(all[3..].iter().copied().chain([more]), opener(&kernel, 3));
        assert_eq!(groups.sockets(), 3);
        assert!(
            kernel
                .borrow()
                .accepted()
                .contains(&solicited_node_multicast(more))
        );
    }

    #[test]
    fn a_failed_join_is_reported_with_its_addresses_and_retried() {
        let kernel = Rc::new(RefCell::new(Kernel::default()));
        let mut groups = Groups::default();
        kernel.borrow_mut().fail_with = Some(libc::ENODEV);
        let (a, b) = (v6("2001:db8::1:100"), v6("2001:db8:0:7::1:100"));
        let r = groups.sync([a, b], opener(&kernel, 3));
        assert_eq!(r.join_failures.len(), 1);
        let f = &r.join_failures[0];
        assert_eq!(f.group, solicited_node_multicast(a));
        assert_eq!(f.addresses, vec![a, b]);
        assert_eq!(f.error.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(groups.sockets(), 0, "no socket kept for nothing");

        kernel.borrow_mut().fail_with = None;
        let r = groups.sync([a, b], opener(&kernel, 3));
        assert!(r.join_failures.is_empty(), "{r:?}");
        assert_eq!(groups.joined(), 1);
    }

    #[test]
    fn when_even_a_fresh_socket_is_full_the_rest_fail_without_opening_more() {
        let kernel = Rc::new(RefCell::new(Kernel::default()));
        let mut groups = Groups::default();
        let mut opened = 0;
        let mut open = || {
            opened += 1;
            opener(&kernel, 0)()
        };
        let r = groups.sync(distinct(5), &mut open);
        assert_eq!(r.join_failures.len(), 5);
        assert!(
            r.join_failures
                .iter()
                .all(|f| f.error.raw_os_error() == Some(libc::ENOMEM))
        );
        assert_eq!(opened, 1);
        assert_eq!(groups.sockets(), 0);
    }

    proptest::proptest! {
        /// Whatever the sequence of address sets: the interface accepts exactly the groups of
        /// the current addresses, no socket is over capacity, none is open and empty, and a
        /// group is held by one socket only.
        #[test]
        fn memberships_follow_the_addresses(
            capacity in 1usize..5,
            steps in proptest::collection::vec(
                proptest::collection::btree_set(0u16..40, 0..30), 1..12),
        ) {
            let kernel = Rc::new(RefCell::new(Kernel::default()));
            let mut groups = Groups::default();
            for step in steps {
                // Low 24 bits from a small range, high bits varied: groups get shared.
                let addresses: Vec<Ipv6Addr> = step
                    .iter()
                    .map(|i| Ipv6Addr::new(0x2001, 0xdb8, i % 3, 0, 0, 0, 1, i / 2))
                    .collect();
                let r = groups.sync(addresses.iter().copied(), opener(&kernel, capacity));
                proptest::prop_assert!(r.join_failures.is_empty(), "{:?}", r);
                proptest::prop_assert!(r.leave_failures.is_empty(), "{:?}", r);
                let want: BTreeSet<Ipv6Addr> =
                    addresses.iter().map(|a| solicited_node_multicast(*a)).collect();
                let k = kernel.borrow();
                proptest::prop_assert_eq!(k.accepted(), want.clone());
                let total: usize = k.sockets.values().map(BTreeSet::len).sum();
                proptest::prop_assert_eq!(total, want.len());
                proptest::prop_assert!(k.sockets.values().all(|s| !s.is_empty() && s.len() <= capacity));
                proptest::prop_assert_eq!(groups.sockets(), k.sockets.len());
                proptest::prop_assert_eq!(groups.joined(), want.len());
            }
        }
    }
}
