//! The built-in node kinds. Each is a [`Node`](crate::Node) with a plain options struct
//! (`Default` gives the usual settings); the CLI runs them by name,
//! `breadboard node <kind> [--broker URL] [--name N] [kind flags]`, filling the options from
//! its flags.
//!
//! | kind     | subscribes     | publishes                                   | data                    |
//! |----------|----------------|---------------------------------------------|-------------------------|
//! | `clock`  | –              | `clock/tick` (request)                      | tick number `n`         |
//! | `pin`    | `clock/tick`   | `pin/<name>/state` (retained, on change); reply to the tick | `0`/`1`; bits `[1, 0, 1]` |
//! | `buzzer` | `pin/+/state`  | `buzzer/<name>/buzz` on each 0 → 1          | the pin's name          |
//!
//! See each module for the details.

pub mod buzzer;
pub mod clock;
pub mod pin;
