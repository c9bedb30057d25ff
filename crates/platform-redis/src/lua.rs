//! Lua scripts sent as custom `EVAL` commands, routed to the hash slot of their keys.
//!
//! fred's `Transaction` has no Lua interface, so a script that must commit with other queued
//! commands (a stream consumer's effects and `XACK`) is queued as a custom `EVAL`. In fred 10.1 a
//! custom command honours only `ClusterHash::Custom(slot)`: any other policy (`Offset`,
//! `FirstKey`) is ignored and the command hashes by its first string argument, which for `EVAL` is
//! the script text. In a cluster that sends the script to an arbitrary node, and a transaction
//! refuses it ("All transaction commands must use the same cluster node"). [`eval`] pins the
//! command to the slot of the script's first key; the other keys must share that slot (see the
//! hash tags in [`crate::keys`]).

use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;

/// The `EVAL` command for a script whose first key is `first_key`: arguments are then
/// `[script, number of keys, keys…, argv…]`, as Redis expects.
pub fn eval(first_key: &str) -> CustomCommand {
    CustomCommand::new_static(
        "EVAL",
        ClusterHash::Custom(redis_keyslot(first_key.as_bytes())),
        false,
    )
}
