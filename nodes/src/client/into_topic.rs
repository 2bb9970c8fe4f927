//! The conversions that let the client's methods take a topic as `&str`, `String` or an
//! already validated [`TopicName`] / [`TopicFilter`]. Strings are validated here, once.

use std::borrow::Cow;

use proto::{TopicError, TopicFilter, TopicName};

/// Anything that names a topic to publish to: `&str`, `String` or a [`TopicName`].
pub trait IntoTopicName {
    /// Validates (if needed) and converts.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a topic one may publish to.
    fn into_topic_name(self) -> Result<TopicName, TopicError>;
}

/// Anything that names a subscription filter: `&str`, `String` or a [`TopicFilter`].
pub trait IntoTopicFilter {
    /// Validates (if needed) and converts.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a valid filter.
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError>;
}

/// The five conversions into a topic type: from itself, from a reference to it, and from the
/// three string forms (validated by the type's `new`).
macro_rules! into_topic {
    ($trait:ident :: $method:ident -> $topic:ident) => {
        impl $trait for $topic {
            fn $method(self) -> Result<$topic, TopicError> {
                Ok(self)
            }
        }

        impl $trait for &$topic {
            fn $method(self) -> Result<$topic, TopicError> {
                Ok(self.clone())
            }
        }

        impl $trait for &str {
            fn $method(self) -> Result<$topic, TopicError> {
                $topic::new(self)
            }
        }

        impl $trait for String {
            fn $method(self) -> Result<$topic, TopicError> {
                $topic::new(self)
            }
        }

        impl $trait for &String {
            fn $method(self) -> Result<$topic, TopicError> {
                $topic::new(self.as_str())
            }
        }
    };
}

into_topic!(IntoTopicName::into_topic_name -> TopicName);

/// A topic as a delivered [`Message`](crate::Message) holds it (its `reply`, say).
impl IntoTopicName for TopicName<Cow<'_, str>> {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self.into_name())
    }
}

impl IntoTopicName for &TopicName<Cow<'_, str>> {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self.to_name())
    }
}
into_topic!(IntoTopicFilter::into_topic_filter -> TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_conversions_validate() {
        assert!("a/b".into_topic_name().is_ok());
        assert!("a/+".into_topic_name().is_err());
        assert!("$SYS/x".into_topic_name().is_err());
        assert!("a/+".into_topic_filter().is_ok());
        assert!(String::from("a/#/b").into_topic_filter().is_err());
    }
}
