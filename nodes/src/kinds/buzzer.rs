//! The buzzer: watches every pin (`pin/+/state`) and buzzes on each 0 → 1 transition it sees,
//! printing `[ buzzer ] bzzz (pin-1)` and publishing the pin's name (a JSON string) on
//! `buzzer/<name>/buzz`.
//!
//! A transition needs a known previous level: the first level heard from a pin (often its
//! retained value) only sets the baseline, so a buzzer started late does not buzz for a pin
//! that was already high.

use std::collections::HashMap;

use crate::Message;

use crate::node::{Context, HookResult, Node};

/// The filter a buzzer listens to.
pub const PIN_STATES: &str = "pin/+/state";

/// The topic a buzzer publishes its buzzes on.
pub fn buzz_topic(name: &str) -> String {
    format!("buzzer/{name}/buzz")
}

/// The buzzer node.
#[derive(Debug, Default)]
pub struct Buzzer {
    /// The last level seen of each pin, by pin name.
    levels: HashMap<String, u8>,
}

impl Buzzer {
    /// A buzzer that has heard nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a pin's level (`None`: cleared, unknown again); true on a 0 → 1 transition.
    pub fn observe(&mut self, pin: &str, level: Option<u8>) -> bool {
        match level {
            Some(level) => self.levels.insert(pin.to_string(), level) == Some(0) && level == 1,
            None => {
                self.levels.remove(pin);
                false
            }
        }
    }
}

/// The pin a state topic belongs to: `pin/<name>/state` → `name`.
fn pin_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("pin/")?;
    let name = rest.strip_suffix("/state")?;
    (!name.contains('/')).then_some(name)
}

impl Node for Buzzer {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        ctx.subscribe(PIN_STATES).await?;
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Context, msg: Message) -> HookResult {
        let Some(pin) = pin_of(msg.topic.as_str()) else {
            return Ok(());
        };
        let level = match &msg.data {
            serde_json::Value::Null => None,
            data => match data.as_u64() {
                Some(l @ (0 | 1)) => Some(l as u8),
                _ => {
                    tracing::warn!(%pin, %data, "ignoring a pin state that is not 0 or 1");
                    return Ok(());
                }
            },
        };
        if self.observe(pin, level) {
            ctx.print(format!("bzzz ({pin})"));
            ctx.publish(buzz_topic(ctx.name()), pin).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buzzes_on_zero_to_one_only() {
        let mut b = Buzzer::new();
        assert!(!b.observe("p", Some(0)));
        assert!(b.observe("p", Some(1)));
        assert!(!b.observe("p", Some(1)));
        assert!(!b.observe("p", Some(0)));
        assert!(b.observe("p", Some(1)));
    }

    #[test]
    fn first_level_is_only_a_baseline() {
        let mut b = Buzzer::new();
        assert!(!b.observe("p", Some(1)));
        assert!(!b.observe("p", None));
        assert!(!b.observe("p", Some(1)));
    }

    #[test]
    fn pins_are_tracked_apart() {
        let mut b = Buzzer::new();
        b.observe("a", Some(0));
        b.observe("b", Some(1));
        assert!(b.observe("a", Some(1)));
        assert!(!b.observe("b", Some(1)));
    }

    #[test]
    fn pin_names_come_from_the_topic() {
        assert_eq!(pin_of("pin/pin-1/state"), Some("pin-1"));
        assert_eq!(pin_of("pin/a/b/state"), None);
        assert_eq!(pin_of("pin/pin-1/level"), None);
        // The pin module owns the topic's shape; both must agree.
        assert_eq!(
            pin_of(&crate::kinds::pin::state_topic("pin-7")),
            Some("pin-7")
        );
    }
}
