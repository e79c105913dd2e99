//! Filtered raw sockets for ARP and NDP, and the socket options BGP and BFD need that `socket2`
//! lacks (TCP MD5 signatures, minimum TTL): the only module of the speaker with `unsafe`.
//!
//! Filtering happens in the kernel so that unrelated traffic never reaches user space:
//!
//! - [`ArpSocket`]: `AF_PACKET`/`SOCK_RAW` created with protocol 0 (which receives nothing),
//!   then a classic BPF program accepting only ARP requests/replies that were not sent by this
//!   host is attached, and only then is it bound to `ETH_P_ARP` and one interface. There is no
//!   window in which unfiltered frames queue up. It is never put in promiscuous mode.
//! - [`NdpSocket`]: raw `AF_INET6`/`IPPROTO_ICMPV6` with an `ICMP6_FILTER` passing only
//!   Neighbor Solicitations and Advertisements, bound to one device, sending with hop limit
//!   255, reporting the received hop limit so RFC 4861's "hop limit must be 255" can be
//!   checked. It holds no group memberships itself: [`GroupSocket`]s do. Advertisements leave
//!   it with IPv6 source = the advertised address ([`NdpSocket::send_from`]), as the kernel
//!   sends its own: tools such as ndisc6 accept only those. The address is not local to the
//!   node, so the socket sets `IPV6_FREEBIND`, which needs no capability (`IPV6_TRANSPARENT`
//!   would need `CAP_NET_ADMIN`), and names the source in an `IPV6_PKTINFO` control message;
//!   the kernel still computes the ICMPv6 checksum, over that source.
//! - [`UnicastNsSocket`]: a second packet socket per IPv6 link for the one kind of NDP a raw
//!   socket never sees: solicitations *unicast* to an owned address (neighbour reachability
//!   probes, RFC 4861 §7.3.3). The address is not local to the node, so the kernel does not
//!   deliver them to raw sockets; without answers, clients' entries fail every reachable
//!   time. Its filter passes only ICMPv6 type 135 with hop limit 255 sent to our MAC.
//! - [`GroupSocket`]: holds solicited-node group memberships and receives nothing. The kernel
//!   caps one socket's memberships (`net.core.optmem_max`), so an interface with many IPv6
//!   addresses needs several; a membership on any socket makes the interface accept the group,
//!   and the [`NdpSocket`] bound to that device then receives what is sent to it.
//!
//! The first three are non-blocking and registered with tokio through [`register`].
#![allow(unsafe_code)] // raw syscalls; each with a SAFETY comment

use std::ffi::c_int;
use std::io::{self, Read};
use std::mem::size_of;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// `ICMP6_FILTER` socket option (level `IPPROTO_ICMPV6`), from `<netinet/icmp6.h>`; absent
/// from the `libc` crate.
pub const ICMP6_FILTER: c_int = 1;

/// `struct icmp6_filter` from `<netinet/icmp6.h>`, absent from the `libc` crate: a bitmap
/// over the 256 ICMPv6 types in which, on Linux, a set bit means *block*.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp6Filter {
    data: [u32; 8],
}

impl Icmp6Filter {
    /// A filter that blocks every type (`ICMP6_FILTER_SETBLOCKALL`).
    pub const fn block_all() -> Self {
        Icmp6Filter {
            data: [u32::MAX; 8],
        }
    }

    /// Lets `icmp_type` through (`ICMP6_FILTER_SETPASS`).
    pub fn pass(&mut self, icmp_type: u8) {
        let t = usize::from(icmp_type);
        if let Some(word) = self.data.get_mut(t >> 5) {
            *word &= !(1u32 << (t & 31));
        }
    }

    /// Whether `icmp_type` gets through (`!ICMP6_FILTER_WILLBLOCK`).
    pub fn passes(&self, icmp_type: u8) -> bool {
        let t = usize::from(icmp_type);
        self.data
            .get(t >> 5)
            .is_some_and(|word| word & (1u32 << (t & 31)) == 0)
    }
}

/// The ICMPv6 filter of the NDP socket: Neighbor Solicitation (135), to answer, and Neighbor
/// Advertisement (136), to detect conflicts.
pub fn ndp_icmp6_filter() -> Icmp6Filter {
    let mut f = Icmp6Filter::block_all();
    f.pass(crate::frames::ICMPV6_NEIGHBOR_SOLICITATION);
    f.pass(crate::frames::ICMPV6_NEIGHBOR_ADVERTISEMENT);
    f
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// Ancillary load of `skb->pkt_type`: the offset is negative by design, hence the cast.
const SKF_PKTTYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
const PACKET_OUTGOING: u32 = 4;
const PACKET_HOST: u32 = 0;
const ETH_P_IPV6: u16 = 0x86dd;

/// The classic BPF program of the ARP socket: accept Ethernet frames with ethertype 0x0806
/// whose ARP operation is request (1) or reply (2), unless this host sent them (packet
/// sockets also see outgoing frames, ours included).
pub fn arp_filter_program() -> [SockFilter; 9] {
    [
        /* 0 */ SockFilter::new(BPF_LD_H_ABS, 0, 0, 12), // ethertype
        /* 1 */
        SockFilter::new(BPF_JEQ_K, 0, 6, crate::frames::ETH_P_ARP.into()), // else drop
        /* 2 */ SockFilter::new(BPF_LD_H_ABS, 0, 0, 20), // ARP operation
        /* 3 */ SockFilter::new(BPF_JEQ_K, 1, 0, 1), // request: to 5
        /* 4 */ SockFilter::new(BPF_JEQ_K, 0, 3, 2), // reply: to 5, else drop
        /* 5 */ SockFilter::new(BPF_LD_W_ABS, 0, 0, SKF_PKTTYPE),
        /* 6 */ SockFilter::new(BPF_JEQ_K, 1, 0, PACKET_OUTGOING), // ours: drop
        /* 7 */ SockFilter::new(BPF_RET_K, 0, 0, 0x0004_0000), // accept (whole frame)
        /* 8 */ SockFilter::new(BPF_RET_K, 0, 0, 0), // drop
    ]
}

/// The classic BPF program of the unicast-NS socket: accept IPv6 frames addressed to this
/// host's MAC whose next header is ICMPv6 (58), hop limit 255 and ICMPv6 type Neighbor
/// Solicitation (135). Solicitations with extension headers are not NDP as sent in practice
/// and are left out.
pub fn unicast_ns_filter_program() -> [SockFilter; 12] {
    [
        /* 0 */ SockFilter::new(BPF_LD_H_ABS, 0, 0, 12), // ethertype
        /* 1 */ SockFilter::new(BPF_JEQ_K, 0, 9, ETH_P_IPV6.into()),
        /* 2 */ SockFilter::new(BPF_LD_B_ABS, 0, 0, 20), // next header
        /* 3 */ SockFilter::new(BPF_JEQ_K, 0, 7, 58),
        /* 4 */ SockFilter::new(BPF_LD_B_ABS, 0, 0, 21), // hop limit
        /* 5 */ SockFilter::new(BPF_JEQ_K, 0, 5, 255),
        /* 6 */ SockFilter::new(BPF_LD_B_ABS, 0, 0, 54), // ICMPv6 type
        /* 7 */ SockFilter::new(BPF_JEQ_K, 0, 3, 135),
        /* 8 */ SockFilter::new(BPF_LD_W_ABS, 0, 0, SKF_PKTTYPE),
        /* 9 */ SockFilter::new(BPF_JEQ_K, 0, 1, PACKET_HOST), // unicast to us only
        /* 10 */ SockFilter::new(BPF_RET_K, 0, 0, 0x0004_0000),
        /* 11 */ SockFilter::new(BPF_RET_K, 0, 0, 0),
    ]
}

/// Opens an `AF_PACKET` socket on `ifindex` that receives only what `program` accepts of
/// `ethertype`: created with protocol 0 (receiving nothing), filter attached, then bound.
fn open_filtered_packet_socket(
    ifindex: u32,
    ethertype: u16,
    program: &[SockFilter],
) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW.nonblocking(),
        Some(Protocol::from(0)),
    )?;
    socket.attach_filter(program)?;
    let ifindex_c = c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value of it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex_c;
    // SAFETY: the fd is an open socket owned by `socket`; the pointer and length describe
    // `sll`, which lives across the call; bind(2) only reads it.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A packet socket that receives only ARP on one interface and sends whole Ethernet frames.
#[derive(Debug)]
pub struct ArpSocket {
    socket: Socket,
    ifindex: u32,
}

impl ArpSocket {
    /// Opens the socket on interface `ifindex` (filter first, bind second).
    pub fn open(ifindex: u32) -> io::Result<ArpSocket> {
        let socket =
            open_filtered_packet_socket(ifindex, crate::frames::ETH_P_ARP, &arp_filter_program())?;
        Ok(ArpSocket { socket, ifindex })
    }

    /// The interface this socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receives one frame (non-blocking: `WouldBlock` when none is queued).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.socket.send(frame)
    }
}

/// A packet socket that receives only Neighbor Solicitations unicast to this host's MAC.
#[derive(Debug)]
pub struct UnicastNsSocket {
    socket: Socket,
    ifindex: u32,
}

impl UnicastNsSocket {
    /// Opens the socket on interface `ifindex` (filter first, bind second).
    pub fn open(ifindex: u32) -> io::Result<UnicastNsSocket> {
        let socket =
            open_filtered_packet_socket(ifindex, ETH_P_IPV6, &unicast_ns_filter_program())?;
        Ok(UnicastNsSocket { socket, ifindex })
    }

    /// The interface this socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receives one Ethernet frame (non-blocking).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }
}

/// One received NDP message: the ICMPv6 body is in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdpReceived {
    /// Bytes of ICMPv6 body received.
    pub len: usize,
    /// IPv6 source address of the packet.
    pub source: Ipv6Addr,
    /// The packet's hop limit, when the kernel reported it.
    pub hop_limit: Option<u8>,
}

/// A raw ICMPv6 socket on one interface that sees only NS and NA.
#[derive(Debug)]
pub struct NdpSocket {
    socket: Socket,
    ifindex: u32,
}

impl NdpSocket {
    /// Opens the socket on interface `ifname`/`ifindex`.
    pub fn open(ifname: &str, ifindex: u32) -> io::Result<NdpSocket> {
        let socket = Socket::new(
            Domain::IPV6,
            Type::RAW.nonblocking(),
            Some(Protocol::ICMPV6),
        )?;
        let filter = ndp_icmp6_filter();
        // SAFETY: the fd is an open socket owned by `socket`; the pointer and length describe
        // `filter`, a #[repr(C)] struct icmp6_filter that outlives the call; the kernel only
        // reads it.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                ICMP6_FILTER,
                (&raw const filter).cast::<libc::c_void>(),
                size_of::<Icmp6Filter>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind_device(Some(ifname.as_bytes()))?;
        // RFC 4861: NDP is sent with hop limit 255 so receivers know it was not routed.
        socket.set_unicast_hops_v6(255)?;
        socket.set_multicast_hops_v6(255)?;
        socket.set_multicast_if_v6(ifindex)?;
        // Our own unsolicited advertisements are not news to us.
        socket.set_multicast_loop_v6(false)?;
        socket.set_recv_hoplimit_v6(true)?;
        // Lets `send_from` use an address the node does not hold (the announced one) as
        // source: without it the kernel rejects such an IPV6_PKTINFO with EINVAL.
        socket.set_freebind_v6(true)?;
        Ok(NdpSocket { socket, ifindex })
    }

    /// The interface this socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends an ICMPv6 body to `dst` from an address of the kernel's choosing (the kernel adds
    /// the header and checksum).
    pub fn send_to(&self, body: &[u8], dst: Ipv6Addr) -> io::Result<usize> {
        let addr = SockAddr::from(SocketAddrV6::new(dst, 0, 0, self.ifindex));
        self.socket.send_to(body, &addr)
    }

    /// Sends an ICMPv6 body to `dst` with IPv6 source `source`, which need not be an address
    /// of the node (the socket has `IPV6_FREEBIND`). The kernel adds the header and computes
    /// the checksum over `source`.
    pub fn send_from(&self, body: &[u8], source: Ipv6Addr, dst: Ipv6Addr) -> io::Result<usize> {
        let mut dst_addr = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: dst.octets(),
            },
            sin6_scope_id: self.ifindex,
        };
        let pktinfo = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: source.octets(),
            },
            ipi6_ifindex: self.ifindex,
        };
        // u64s so the control buffer is aligned for struct cmsghdr; 8 of them hold the
        // 16-byte header plus the 20-byte in6_pktinfo, padded.
        let mut control = [0u64; 8];
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize,
                libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize,
            )
        };
        if space > size_of::<[u64; 8]>() {
            return Err(io::Error::other(
                "control buffer too small for IPV6_PKTINFO",
            ));
        }
        let mut iov = libc::iovec {
            iov_base: body.as_ptr().cast_mut().cast(),
            iov_len: body.len(),
        };
        // SAFETY: msghdr is plain old data (integers and pointers); all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut dst_addr).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control/msg_controllen describe `control`, at least CMSG_SPACE bytes
        // (checked above), so CMSG_FIRSTHDR returns a non-null header inside it with room for
        // the header and CMSG_LEN bytes of data.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for IPV6_PKTINFO"));
            }
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = len as _;
            // write_unaligned because cmsg data has no alignment promise.
            libc::CMSG_DATA(cmsg)
                .cast::<libc::in6_pktinfo>()
                .write_unaligned(pktinfo);
        }
        // SAFETY: every pointer in `msg` refers to a live local (`dst_addr`, `iov`, `control`)
        // or to `body`, with the lengths given; they all outlive the call, and sendmsg(2) only
        // reads them (iov_base is *mut only by the C type's signature).
        let n = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &raw const msg, 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Receives one ICMPv6 body with its source address and hop limit (non-blocking).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<NdpReceived> {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value of it.
        let mut source: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        // u64s so the control buffer is aligned for struct cmsghdr.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data (integers and pointers); all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut source).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: every pointer in `msg` refers to a live local (`source`, `iov`, `control`)
        // or to `buf`, with the lengths given; they all outlive the call, and the kernel
        // writes at most those lengths.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &raw mut msg, 0) };
        let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut hop_limit = None;
        // SAFETY: `msg` was filled by a successful recvmsg, so msg_control/msg_controllen
        // describe initialised control messages inside `control`; CMSG_FIRSTHDR/NXTHDR stay
        // within it and return null at its end.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points at a cmsghdr inside `control` (above).
            let header = unsafe { &*cmsg };
            // SAFETY: CMSG_LEN is pure arithmetic.
            let int_len = unsafe { libc::CMSG_LEN(size_of::<c_int>() as u32) } as usize;
            if header.cmsg_level == libc::IPPROTO_IPV6
                && header.cmsg_type == libc::IPV6_HOPLIMIT
                && header.cmsg_len as usize >= int_len
            {
                // SAFETY: the length check above guarantees a c_int of data after the
                // header; read_unaligned because cmsg data has no alignment promise.
                let value = unsafe { libc::CMSG_DATA(cmsg).cast::<c_int>().read_unaligned() };
                hop_limit = u8::try_from(value).ok();
            }
            // SAFETY: as for CMSG_FIRSTHDR; `cmsg` is a header of this message.
            cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
        }
        Ok(NdpReceived {
            len: len.min(buf.len()),
            source: Ipv6Addr::from(source.sin6_addr.s6_addr),
            hop_limit,
        })
    }
}

/// A socket that only holds IPv6 multicast memberships on one interface and never receives.
///
/// It is a UDP socket that is never bound: without a local port it is in none of the kernel's
/// UDP lookup tables, so no datagram is ever queued on it and incoming packets never even
/// consider it. (A raw ICMPv6 socket with an `ICMP6_FILTER` blocking every type would also
/// receive nothing, but each incoming ICMPv6 packet would still be matched against it and its
/// filter run, and it needs `CAP_NET_RAW`.) Closing it leaves its groups.
#[derive(Debug)]
pub struct GroupSocket {
    socket: Socket,
    ifindex: u32,
}

impl GroupSocket {
    /// Opens a membership-only socket for interface `ifindex`.
    pub fn open(ifindex: u32) -> io::Result<GroupSocket> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        Ok(GroupSocket { socket, ifindex })
    }

    /// Joins `group` on the interface. Fails with `ENOMEM` (or `ENOBUFS`) once this socket's
    /// option memory is used up: see [`is_membership_full`].
    pub fn join(&self, group: Ipv6Addr) -> io::Result<()> {
        self.socket.join_multicast_v6(&group, self.ifindex)
    }

    /// Leaves a group joined with [`GroupSocket::join`].
    pub fn leave(&self, group: Ipv6Addr) -> io::Result<()> {
        self.socket.leave_multicast_v6(&group, self.ifindex)
    }
}

/// Whether a failed join means that the socket holds as many memberships as
/// `net.core.optmem_max` allows (IPv6 reports `ENOMEM`, IPv4 `ENOBUFS`): another socket may
/// still succeed.
pub fn is_membership_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS))
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ArpSocket {}
    impl Sealed for super::NdpSocket {}
    impl Sealed for super::UnicastNsSocket {}
}

/// Sockets of this module that may be registered with tokio. Sealed: the safety argument of
/// [`register`] holds for these types only.
pub trait OwnedSocket: AsRawFd + sealed::Sealed {}
impl OwnedSocket for ArpSocket {}
impl OwnedSocket for NdpSocket {}
impl OwnedSocket for UnicastNsSocket {}

impl AsRawFd for UnicastNsSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsRawFd for ArpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for ArpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for NdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for NdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Registers a socket with the current tokio runtime's reactor.
///
/// tokio 1.54 deprecated `AsyncFd::new` as unsound (it cannot know that the descriptor stays
/// valid) in favour of the `unsafe` `AsyncFd::register`. The invariant it needs holds here:
/// [`ArpSocket`], [`NdpSocket`] and [`UnicastNsSocket`] own their descriptor through a `socket2::Socket` that is
/// created once, never replaced, never exposed mutably and closed only when the socket value
/// is dropped — which `AsyncFd` does after deregistering. So `as_raw_fd` returns the same
/// open descriptor for the whole registration.
///
/// Must be called within a tokio runtime (it panics otherwise, like every tokio I/O type).
pub fn register<T: OwnedSocket>(socket: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: see the invariant above; `OwnedSocket` is sealed to the types it covers.
    let registered =
        unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE) };
    registered.map_err(|e| e.into_parts().1)
}

/// Waits for and receives one ARP frame.
pub async fn recv_arp(fd: &AsyncFd<ArpSocket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().recv(buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Waits for and receives one frame from a [`UnicastNsSocket`].
pub async fn recv_unicast_ns(fd: &AsyncFd<UnicastNsSocket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().recv(buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Sends one ARP frame, waiting while the socket's send buffer is full.
pub async fn send_arp(fd: &AsyncFd<ArpSocket>, frame: &[u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|s| s.get_ref().send(frame)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Waits for and receives one NDP message.
pub async fn recv_ndp(fd: &AsyncFd<NdpSocket>, buf: &mut [u8]) -> io::Result<NdpReceived> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().recv(buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Sends one ICMPv6 body from `source` to `dst` ([`NdpSocket::send_from`]), waiting while the
/// socket's send buffer is full.
pub async fn send_ndp(
    fd: &AsyncFd<NdpSocket>,
    body: &[u8],
    source: Ipv6Addr,
    dst: Ipv6Addr,
) -> io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|s| s.get_ref().send_from(body, source, dst)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp6_filter_passes_only_ndp() {
        let f = ndp_icmp6_filter();
        for t in 0..=255u8 {
            assert_eq!(f.passes(t), t == 135 || t == 136, "type {t}");
        }
        // Layout matches the kernel's: type 135 is bit 7 of word 4.
        assert_eq!(f.data[4], !((1 << 7) | (1 << 8)));
        assert_eq!(size_of::<Icmp6Filter>(), 32);
    }

    /// A tiny interpreter of the classic BPF subset we use, to check the program's logic
    /// on frames without a kernel.
    fn run_bpf(prog: &[(u16, u8, u8, u32)], frame: &[u8], pkttype: u32) -> u32 {
        let mut pc = 0usize;
        let mut acc = 0u32;
        loop {
            let (code, jt, jf, k) = prog[pc];
            match code {
                BPF_LD_H_ABS => {
                    let o = k as usize;
                    match frame.get(o..o + 2) {
                        Some(b) => acc = u32::from(u16::from_be_bytes([b[0], b[1]])),
                        None => return 0,
                    }
                }
                BPF_LD_B_ABS => match frame.get(k as usize) {
                    Some(b) => acc = u32::from(*b),
                    None => return 0,
                },
                BPF_LD_W_ABS if k == SKF_PKTTYPE => acc = pkttype,
                BPF_JEQ_K => {
                    pc += usize::from(if acc == k { jt } else { jf });
                }
                BPF_RET_K => return k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    fn tuples(program: &[SockFilter]) -> Vec<(u16, u8, u8, u32)> {
        program
            .iter()
            .map(|f| {
                // SAFETY (test only): SockFilter is #[repr(transparent)] over sock_filter.
                let raw: libc::sock_filter = unsafe { std::mem::transmute_copy(f) };
                (raw.code, raw.jt, raw.jf, raw.k)
            })
            .collect()
    }

    #[test]
    fn unicast_ns_program_accepts_only_unicast_solicitations_from_the_link() {
        use crate::frames::{
            MacAddr, ipv6_icmp_frame, neighbor_advertisement, neighbor_solicitation,
        };
        let prog = tuples(&unicast_ns_filter_program());
        let (a, b) = (
            MacAddr::new(2, 0, 0, 0, 0, 1),
            MacAddr::new(2, 0, 0, 0, 0, 2),
        );
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        );
        let ns = ipv6_icmp_frame(a, b, src, dst, 255, &neighbor_solicitation(dst, Some(a)));
        assert_ne!(run_bpf(&prog, &ns, PACKET_HOST), 0);
        // Multicast ones come through the raw socket; our own are not news.
        assert_eq!(run_bpf(&prog, &ns, 2), 0);
        assert_eq!(run_bpf(&prog, &ns, PACKET_OUTGOING), 0);
        let routed = ipv6_icmp_frame(a, b, src, dst, 64, &neighbor_solicitation(dst, Some(a)));
        assert_eq!(run_bpf(&prog, &routed, PACKET_HOST), 0);
        let na = ipv6_icmp_frame(
            a,
            b,
            src,
            dst,
            255,
            &neighbor_advertisement(dst, a, true, true),
        );
        assert_eq!(run_bpf(&prog, &na, PACKET_HOST), 0);
        let mut udp = ns.clone();
        udp[20] = 17;
        assert_eq!(run_bpf(&prog, &udp, PACKET_HOST), 0);
        let mut v4 = ns.clone();
        v4[12] = 0x08;
        v4[13] = 0;
        assert_eq!(run_bpf(&prog, &v4, PACKET_HOST), 0);
        assert_eq!(run_bpf(&prog, &ns[..40], PACKET_HOST), 0);
    }

    /// The same program as plain tuples (SockFilter's fields are private).
    fn program_tuples() -> Vec<(u16, u8, u8, u32)> {
        vec![
            (BPF_LD_H_ABS, 0, 0, 12),
            (BPF_JEQ_K, 0, 6, 0x0806),
            (BPF_LD_H_ABS, 0, 0, 20),
            (BPF_JEQ_K, 1, 0, 1),
            (BPF_JEQ_K, 0, 3, 2),
            (BPF_LD_W_ABS, 0, 0, SKF_PKTTYPE),
            (BPF_JEQ_K, 1, 0, PACKET_OUTGOING),
            (BPF_RET_K, 0, 0, 0x0004_0000),
            (BPF_RET_K, 0, 0, 0),
        ]
    }

    #[test]
    fn arp_program_accepts_only_incoming_arp_requests_and_replies() {
        let prog = program_tuples();
        // The tuples are the real program: SockFilter is repr(C) sock_filter
        // {code: u16, jt: u8, jf: u8, k: u32}, so compare the raw bytes.
        let real = arp_filter_program();
        assert_eq!(real.len(), prog.len());
        for (r, t) in real.iter().zip(&prog) {
            // SAFETY (test only): SockFilter is #[repr(transparent)] over libc::sock_filter.
            let raw: libc::sock_filter = unsafe { std::mem::transmute_copy(r) };
            assert_eq!((raw.code, raw.jt, raw.jf, raw.k), *t);
        }
        use crate::frames::{MacAddr, arp_request, gratuitous_arp};
        let mac = MacAddr::new(2, 0, 0, 0, 0, 1);
        let req = arp_request(
            mac,
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        );
        assert_ne!(run_bpf(&prog, &req, 0), 0);
        assert_ne!(run_bpf(&prog, &req, 1), 0); // broadcast
        assert_eq!(run_bpf(&prog, &req, PACKET_OUTGOING), 0);
        let mut reply = req.clone();
        reply[21] = 2;
        assert_ne!(run_bpf(&prog, &reply, 0), 0);
        let mut rarp = req.clone();
        rarp[21] = 3;
        assert_eq!(run_bpf(&prog, &rarp, 0), 0);
        let mut ipv4 = gratuitous_arp("192.0.2.1".parse().unwrap(), mac);
        ipv4[12] = 0x08;
        ipv4[13] = 0x00;
        assert_eq!(run_bpf(&prog, &ipv4, 0), 0);
        assert_eq!(run_bpf(&prog, &req[..15], 0), 0);
    }
}

/// Longest TCP MD5 key the kernel takes (`TCP_MD5SIG_MAXKEYLEN` in `<linux/tcp.h>`).
pub const TCP_MD5_MAX_KEY: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>` (absent from the `libc` crate), laid out byte by
/// byte: a 128-byte `sockaddr_storage` naming the peer, then flags, prefix length, key length,
/// interface index and the key. Building it as bytes needs no `unsafe` zeroing of the C struct.
fn tcp_md5sig(peer: std::net::IpAddr, key: &[u8]) -> [u8; 216] {
    let mut buf = [0u8; 216];
    match peer {
        std::net::IpAddr::V4(a) => {
            let family = libc::AF_INET as u16;
            buf[0..2].copy_from_slice(&family.to_ne_bytes());
            buf[4..8].copy_from_slice(&a.octets());
        }
        std::net::IpAddr::V6(a) => {
            let family = libc::AF_INET6 as u16;
            buf[0..2].copy_from_slice(&family.to_ne_bytes());
            buf[8..24].copy_from_slice(&a.octets());
        }
    }
    // flags (128), prefix length (129) stay 0: the key is for exactly this address.
    let len = key.len().min(TCP_MD5_MAX_KEY);
    buf[130..132].copy_from_slice(&(len as u16).to_ne_bytes());
    buf[136..136 + len].copy_from_slice(&key[..len]);
    buf
}

fn setsockopt_bytes(fd: RawFd, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is an open socket borrowed from its owner for this call; the kernel reads
    // exactly `len` bytes from `value`, which lives across the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the TCP MD5 signature key (RFC 2385) for segments exchanged with `peer` on `socket`;
/// an empty key removes it. Set it before `connect`, or on a listening socket before the peer
/// connects: segments without the right signature are then dropped by the kernel.
pub fn set_tcp_md5(socket: &impl AsRawFd, peer: std::net::IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > TCP_MD5_MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP MD5 key is at most {TCP_MD5_MAX_KEY} bytes"),
        ));
    }
    setsockopt_bytes(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_MD5SIG,
        &tcp_md5sig(peer, key),
    )
}

/// Drops received packets whose TTL (hop limit) is below `min` (`IP_MINTTL`,
/// `IPV6_MINHOPCOUNT`): with 255, only packets from a neighbour on the link get through, the
/// Generalized TTL Security Mechanism (RFC 5082) that single-hop BFD requires (RFC 5881 5).
pub fn set_min_ttl(socket: &impl AsRawFd, ipv6: bool, min: u8) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT)
    } else {
        (libc::IPPROTO_IP, libc::IP_MINTTL)
    };
    setsockopt_bytes(
        socket.as_raw_fd(),
        level,
        name,
        &c_int::from(min).to_ne_bytes(),
    )
}

#[cfg(test)]
mod md5_tests {
    use super::*;

    #[test]
    fn tcp_md5sig_layout_matches_the_kernel_struct() {
        let b = tcp_md5sig("192.0.2.1".parse().unwrap(), b"secret");
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), libc::AF_INET as u16);
        assert_eq!(&b[4..8], &[192, 0, 2, 1]);
        assert_eq!(u16::from_ne_bytes([b[130], b[131]]), 6);
        assert_eq!(&b[136..142], b"secret");
        let b = tcp_md5sig("2001:db8::1".parse().unwrap(), b"k");
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), libc::AF_INET6 as u16);
        assert_eq!(b[8], 0x20);
        assert_eq!(b[23], 1);
    }

    #[test]
    fn the_kernel_takes_a_key_and_refuses_a_long_one() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        set_tcp_md5(&s, "192.0.2.1".parse().unwrap(), b"secret").unwrap();
        assert!(set_tcp_md5(&s, "192.0.2.1".parse().unwrap(), &[b'x'; 81]).is_err());
        let u = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        set_min_ttl(&u, false, 255).unwrap();
        let u6 = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        set_min_ttl(&u6, true, 255).unwrap();
    }
}

/// The scheduling the calling thread got from [`raise_thread_priority`].
#[derive(Debug)]
pub enum ThreadPriority {
    /// `SCHED_RR` at this priority: it runs ahead of every ordinary (CFS) thread of the node.
    Realtime(u8),
    /// Still `SCHED_OTHER`, at this nice value.
    Nice(i8),
    /// Neither could be set (no `CAP_SYS_NICE`): why the real-time policy was refused.
    Unchanged(io::Error),
}

/// Gives the calling thread the real-time round-robin policy at `realtime` (1-99), or failing
/// that the nice value `nice`; both need `CAP_SYS_NICE`.
///
/// For the membership thread: a thread that is not scheduled for a second looks dead to the
/// other speakers, and under CPU pressure the ordinary scheduler can leave it that long. By
/// hand rather than a crate: two libc calls.
pub fn raise_thread_priority(realtime: u8, nice: i8) -> ThreadPriority {
    // Zeroed, then the one field set: musl's `sched_param` has more fields than glibc's.
    // SAFETY: `sched_param` is plain integers, for which all-zero is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = c_int::from(realtime);
    // SAFETY: `pthread_self` is the calling thread, alive during the call; `param` is a valid
    // `sched_param` that the call only reads.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) };
    if rc == 0 {
        return ThreadPriority::Realtime(realtime);
    }
    let refused = io::Error::from_raw_os_error(rc);
    // SAFETY: `gettid` takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return ThreadPriority::Unchanged(refused);
    };
    // On Linux, `setpriority(PRIO_PROCESS, tid)` sets that one thread's nice value.
    // SAFETY: plain integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, c_int::from(nice)) };
    if rc == 0 {
        ThreadPriority::Nice(nice)
    } else {
        ThreadPriority::Unchanged(refused)
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    #[test]
    fn a_thread_gets_a_priority_or_says_why_not() {
        // Root here (the test suite needs it): the real-time policy is granted, to this one
        // thread only.
        let got = std::thread::spawn(|| {
            let got = raise_thread_priority(1, -10);
            // SAFETY: reads the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (got, policy)
        })
        .join()
        .unwrap();
        match got {
            (ThreadPriority::Realtime(1), policy) => assert_eq!(policy, libc::SCHED_RR),
            (other, _) => panic!("expected real-time as root, got {other:?}"),
        }
        // SAFETY: reads the calling thread's policy.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
