//! Steering a spread UDP nodePort's datagrams to workers by client address.
//!
//! A spread nodePort is a `SO_REUSEPORT` group of one socket per worker, bound in worker order.
//! The kernel's own choice hashes the whole 4-tuple, so one client's ports would land on
//! different workers and ClientIP affinity (kept per worker) would not hold. This classic BPF
//! program, attached to the group, returns `hash(source address) % workers` instead: every
//! datagram of a client reaches the same worker and its conntrack shard.

use std::io;
use std::os::fd::AsRawFd;

use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_ALU, BPF_K, BPF_LD, BPF_MISC};
use libc::{BPF_A, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR};

use crate::model::Family;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic, so x86_64 and arm64; the libc crate defines it for
/// Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A load of the 32-bit word at `offset` of the IP header.
fn load_net(offset: u32) -> sock_filter {
    stmt(
        BPF_LD | BPF_W | BPF_ABS,
        (libc::SKF_NET_OFF as u32).wrapping_add(offset),
    )
}

/// The program for a group of `members` sockets of `family`: the source address folded to
/// 32 bits (IPv6: its four words XORed), mixed (the same finaliser as [`mix32`]), modulo
/// `members`.
pub(super) fn program(family: Family, members: u32) -> Vec<sock_filter> {
    let mut p = Vec::with_capacity(20);
    match family {
        // IPv4 source address: bytes 12..16 of the header.
        Family::V4 => p.push(load_net(12)),
        // IPv6 source address: bytes 8..24.
        Family::V6 => {
            p.push(load_net(8));
            for offset in [12, 16, 20] {
                p.push(stmt(BPF_MISC | BPF_TAX, 0));
                p.push(load_net(offset));
                p.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
            }
        }
    }
    for round in [
        // A ^= A >> 16; A *= 0x45d9f3b; A ^= A >> 16
        [
            stmt(BPF_MISC | BPF_TAX, 0),
            stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        ],
        [
            stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
            stmt(BPF_ALU | BPF_MUL | BPF_K, MIX),
        ],
        [
            stmt(BPF_MISC | BPF_TAX, 0),
            stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        ],
    ] {
        p.extend(round);
    }
    p.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
    p.push(stmt(BPF_ALU | BPF_MOD | BPF_K, members.max(1)));
    p.push(stmt(BPF_RET | BPF_A, 0));
    p
}

/// The multiplier of the mix (a well-distributing odd constant).
const MIX: u32 = 0x045d_9f3b;

/// What the program computes for a source address folded to `folded`, for tests and for
/// telling which worker a client lands on.
fn mix32(folded: u32) -> u32 {
    let a = folded ^ (folded >> 16);
    let a = a.wrapping_mul(MIX);
    a ^ (a >> 16)
}

/// The worker a client address lands on in a group of `members`.
pub fn member_of(client: std::net::IpAddr, members: u32) -> u32 {
    let folded = match client {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            (0..4)
                .map(|i| u32::from_be_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
                .fold(0, |acc, w| acc ^ w)
        }
    };
    mix32(folded) % members.max(1)
}

/// Attaches the program to the group `sock` belongs to (any member will do).
pub(super) fn attach(sock: &impl AsRawFd, family: Family, members: u32) -> io::Result<()> {
    let mut filter = program(family, members);
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn the_program_is_the_same_length_as_its_description() {
        // load, 3 mix rounds of 2, xor, mod, ret
        assert_eq!(program(Family::V4, 2).len(), 1 + 6 + 3);
        // 4 loads with 3 tax/xor pairs
        assert_eq!(program(Family::V6, 2).len(), 1 + 9 + 6 + 3);
        let last_but_one = program(Family::V4, 7)[8];
        assert_eq!(last_but_one.k, 7, "modulo the group size");
    }

    /// Runs `prog` the way the kernel runs a reuseport program on a datagram whose IP
    /// header is `net`: just the instructions `program` emits.
    fn run(prog: &[sock_filter], net: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        for ins in prog {
            match u32::from(ins.code) {
                c if c == BPF_LD | BPF_W | BPF_ABS => {
                    let at = ins.k.wrapping_sub(libc::SKF_NET_OFF as u32) as usize;
                    a = u32::from_be_bytes(net[at..at + 4].try_into().unwrap());
                }
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
                c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= ins.k,
                c if c == BPF_ALU | BPF_MUL | BPF_K => a = a.wrapping_mul(ins.k),
                c if c == BPF_ALU | BPF_MOD | BPF_K => a %= ins.k,
                c if c == BPF_RET | BPF_A => return a,
                other => panic!("instruction {other:#x} is not one program() emits"),
            }
        }
        panic!("the program fell off its end")
    }

    /// An IP header of `client`'s family with `client` as its source (the rest arbitrary).
    fn header(client: IpAddr) -> Vec<u8> {
        match client {
            IpAddr::V4(a) => {
                let mut h = vec![0x45; 20];
                h[12..16].copy_from_slice(&a.octets());
                h
            }
            IpAddr::V6(a) => {
                let mut h = vec![0x60; 40];
                h[8..24].copy_from_slice(&a.octets());
                h
            }
        }
    }

    #[test]
    fn the_kernel_program_picks_the_member_member_of_names() {
        // Deterministic pseudo-random addresses (a 64-bit LCG), both families, every size.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        for members in 1..=64u32 {
            for _ in 0..50 {
                let v4 = IpAddr::from(std::net::Ipv4Addr::from((next() >> 32) as u32));
                let v6 = IpAddr::from(std::net::Ipv6Addr::from(
                    (u128::from(next()) << 64) | u128::from(next()),
                ));
                for (ip, family) in [(v4, Family::V4), (v6, Family::V6)] {
                    let got = run(&program(family, members), &header(ip));
                    assert_eq!(got, member_of(ip, members), "{ip} in a group of {members}");
                    assert!(got < members);
                }
            }
        }
    }

    #[test]
    fn clients_spread_over_members_and_each_stays_on_one() {
        let mut per = [0usize; 2];
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 | i));
            // Whatever the source port: the program reads only the address.
            let m = run(&program(Family::V4, 2), &header(ip));
            per[m as usize] += 1;
        }
        assert!(per.iter().all(|&n| n > 400), "{per:?}");
        let mut per = [0usize; 3];
        for i in 0..1500u128 {
            let ip = IpAddr::from(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | i));
            per[run(&program(Family::V6, 3), &header(ip)) as usize] += 1;
        }
        assert!(per.iter().all(|&n| n > 400), "{per:?}");
    }
}
