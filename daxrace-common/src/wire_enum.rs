//! One macro for the enums whose numbers cross the kernel/user boundary.

/// Declares a `#[repr($repr)]` enum whose values are part of the record and
/// trace formats (so every value is written out, never implied), with:
///
/// - `COUNT` and `ALL` (every variant, in declaration order);
/// - `from_repr(v)`: the variant of a value, `None` for any other;
/// - `as_str()`, the label (a metric label or trace-file name), when every
///   variant has one (`Variant = 3 => "label"`).
///
/// Values must be strictly increasing in declaration order (checked at
/// compile time), so that `ALL` lists them in value order and a new variant
/// can only be appended.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:literal $(=> $label:literal)?
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Number of variants.
            pub const COUNT: usize = [$($name::$variant),+].len();
            /// Every variant, in value order.
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),+];

            /// The variant whose value is `v`.
            #[inline(always)]
            pub const fn from_repr(v: $repr) -> Option<Self> {
                match v {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        // Values strictly increasing: `ALL` is in value order, and no two
        // variants share one.
        const _: () = {
            let mut i = 1;
            while i < $name::COUNT {
                assert!(($name::ALL[i - 1] as $repr) < ($name::ALL[i] as $repr));
                i += 1;
            }
        };

        wire_enum!(@labels $name { $( $variant $(=> $label)? ),+ });
    };
    (@labels $name:ident { $( $variant:ident => $label:literal ),+ }) => {
        impl $name {
            /// The variant's label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                }
            }
        }
    };
    (@labels $name:ident { $( $variant:ident ),+ }) => {};
}
