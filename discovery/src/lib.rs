//! Zero-configuration discovery over mDNS/DNS-SD: brokers and nodes advertise themselves and
//! find one another with no address configured. Every mdns-sd call of breadboard is in this
//! crate; the broker command, the nodes and `ls` all go through it.
//!
//! Parts:
//! - [`daemon`]: [`Discovery`], the one mDNS daemon of a process, restricted to the chosen
//!   interfaces (checked before it starts), and its goodbye on [`Discovery::shutdown`].
//! - [`advertise`]: what a process announces ([`Advert`]), registered with
//!   [`Discovery::advertise`].
//! - [`browse`]: watching one service type ([`Browser`]) as services come and go ([`Seen`]),
//!   and [`Discovery::verify`] to learn quickly that one has left.
//! - [`records`]: what goes on the LAN: the service types ([`BROKER_TYPE`], [`NODE_TYPE`]), the
//!   TXT records of brokers and nodes ([`broker_txt`] with the broker's [`BrokerSecurity`]:
//!   `tls`, `fp`, `auth`; [`node_txt`]), a service as seen ([`Service`]), and the mDNS size
//!   limits.
//! - [`brokers`]: which broker a node or a tool should use ([`BrokerChoice`], [`pick`]), kept
//!   up to date as brokers come and go by [`follow_brokers`].
//! - [`error`]: [`Error`], what can go wrong.
//!
//! ```text
//!  broker ── advertise _breadboard._tcp.local. (TXT proto, name, path, enc,    ┐
//!                                               [tls, fp, auth])              │
//!  node ──── advertise _bbnode._tcp.local.     (TXT proto, name, kind, broker) ┤ multicast
//!  node ──── browse _breadboard._tcp.local. ─► follow_brokers ─► watch<Option<BrokerChoice>>
//!  ls ────── browse both ─► table / --watch
//! ```
//!
//! mdns-sd runs its own thread and hands events over flume channels; they are read here with
//! `recv_async().await`. Sharp edges of mdns-sd handled here: a service type over 15 bytes
//! fails only through `monitor()` (ours are checked by a test), instance names over 63 bytes are
//! never sent (truncated here), one browse per service type per daemon (each [`Discovery`]
//! browses a type once), `ServiceResolved` repeats as records arrive (callers upsert by full
//! name), a node sees its own advertisement, and dropping the daemon without `shutdown()` sends
//! no goodbye ([`Discovery::shutdown`], and `Drop` as a safety net).
//!
//! Creating a [`Discovery`] joins the mDNS multicast group on the selected interfaces; the
//! commands' `--no-mdns` creates none at all.

pub mod advertise;
pub mod brokers;
pub mod browse;
pub mod daemon;
pub mod error;
pub mod records;

pub use advertise::Advert;
pub use brokers::{follow_brokers, pick, BrokerChoice, Wanted};
pub use browse::{Browser, Seen, VERIFY_TIMEOUT};
pub use daemon::Discovery;
pub use error::{Error, Result};
pub use records::{
    broker_txt, candidate_txt, node_txt, peer_broker_txt, truncate_utf8, BrokerSecurity, Rank,
    Service, BROKER_TYPE, MAX_INSTANCE_BYTES, NODE_TYPE, PEER_TYPE,
};
