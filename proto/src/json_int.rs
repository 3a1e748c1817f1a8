//! Integers as JSON Schema reads them: `28` and `28.0` are the same integer (JSON has one number
//! type, and a schema's `"type": "integer"` admits both), so request fields typed `u32`/`u64`
//! accept a number with a zero fraction too. Anything else keeps serde's error, naming the field.

use serde::de::{self, Deserializer, Visitor};

struct Whole<T>(std::marker::PhantomData<T>);

macro_rules! whole_visitor {
    ($t:ty) => {
        impl Visitor<'_> for Whole<$t> {
            type Value = $t;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a whole number from 0 to {}", <$t>::MAX)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                <$t>::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                <$t>::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                // Exactly representable whole numbers only: 2^64 as f64 is out of range.
                if v.fract() == 0.0 && v >= 0.0 && v < <$t>::MAX as f64 {
                    Ok(v as $t)
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
    };
}

whole_visitor!(u32);
whole_visitor!(u64);

/// For `#[serde(deserialize_with = "json_int::opt_u32")]` on `Option<u32>` fields.
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    d.deserialize_option(OptWhole::<u32>(std::marker::PhantomData))
}

/// For `Option<u64>` fields.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptWhole::<u64>(std::marker::PhantomData))
}

/// For `u32` fields.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(Whole::<u32>(std::marker::PhantomData))
}

struct OptWhole<T>(std::marker::PhantomData<T>);

macro_rules! opt_visitor {
    ($t:ty) => {
        impl<'de> Visitor<'de> for OptWhole<$t> {
            type Value = Option<$t>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "null or a whole number from 0 to {}", <$t>::MAX)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(Whole::<$t>(std::marker::PhantomData))
                    .map(Some)
            }
        }
    };
}

opt_visitor!(u32);
opt_visitor!(u64);

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        #[serde(default, deserialize_with = "super::opt_u32")]
        steps: Option<u32>,
        #[serde(default, deserialize_with = "super::opt_u64")]
        seed: Option<u64>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_floats_are_integers_and_the_rest_is_refused() {
        let b = parse(r#"{"steps": 28.0, "seed": 42}"#).expect("ok");
        assert_eq!((b.steps, b.seed), (Some(28), Some(42)));
        assert_eq!(parse(r#"{"steps": null}"#).expect("ok").steps, None);
        assert_eq!(parse("{}").expect("ok").steps, None);
        for bad in [
            r#"{"steps": 28.5}"#,
            r#"{"steps": -1}"#,
            r#"{"steps": 4294967296}"#,
            r#"{"steps": "28"}"#,
            r#"{"seed": 1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
