//! Typed Prometheus label values: an enum whose variants are the values of
//! one label, declared once with the label's key. Each variant knows its
//! value (`as_str`) and its whole `key="value"` pair (`label`), made at
//! compile time, so exposition writes it without formatting and no table
//! of label strings is kept in step with the enum elsewhere.

/// Declares an enum of label values: `label_value! { /// doc
/// pub enum Sharing: "sharing" { /// doc
/// Exclusive = "exclusive", … } }`.
macro_rules! label_value {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $key:literal {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The label's key.
            pub const KEY: &'static str = $key;

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)*
                }
            }

            /// The whole `key="value"` pair, ready to write.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => concat!($key, "=\"", $value, "\""),)*
                }
            }
        }
    };
}

pub(crate) use label_value;
