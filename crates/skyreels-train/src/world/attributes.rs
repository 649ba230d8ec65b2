//! The vocabulary of the film world: every attribute a clip can have, with the words prompts use
//! for it.

use serde::{Deserialize, Serialize};

/// Declares an attribute enum with its prompt words and the list of all values.
macro_rules! attribute {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The words prompts and captions use for this value.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// The value whose prompt words are `word`, if any.
            pub fn from_word(word: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.word() == word)
            }
        }
    };
}

attribute!(
    /// What a subject looks like.
    Shape {
        /// A disc.
        Circle => "circle",
        /// An axis-aligned square (until it spins).
        Square => "square",
        /// An equilateral triangle pointing up.
        Triangle => "triangle",
        /// A square standing on a corner.
        Diamond => "diamond",
        /// A five-pointed star.
        Star => "star",
    }
);

attribute!(
    /// Subject colours.
    Colour {
        /// (220, 40, 40).
        Red => "red",
        /// (40, 180, 60).
        Green => "green",
        /// (40, 80, 220).
        Blue => "blue",
        /// (240, 210, 40).
        Yellow => "yellow",
        /// (150, 60, 200).
        Purple => "purple",
        /// (245, 140, 30).
        Orange => "orange",
        /// (245, 245, 245).
        White => "white",
        /// (20, 20, 20).
        Black => "black",
        /// (128, 128, 128).
        Gray => "gray",
    }
);

impl Colour {
    /// sRGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 180, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [240, 210, 40],
            Colour::Purple => [150, 60, 200],
            Colour::Orange => [245, 140, 30],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
            Colour::Gray => [128, 128, 128],
        }
    }

    /// Colours a subject may have (black and gray are for backgrounds).
    pub const SUBJECT: &'static [Colour] =
        &[Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Orange, Colour::White];
}

attribute!(
    /// Subject sizes (radius in world units: 0.13, 0.175, 0.235). A small subject in a wide shot
    /// is 17 pixels across at 64×64, two 8×8 latent cells, so the VAE can keep its corners.
    Size {
        /// Radius 0.13.
        Small => "small",
        /// Radius 0.175; not named in prompts.
        Medium => "medium",
        /// Radius 0.235.
        Large => "large",
    }
);

impl Size {
    /// Radius in world units (the wide shot shows a 1×1 world square).
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 0.13,
            Size::Medium => 0.175,
            Size::Large => 0.235,
        }
    }
}

attribute!(
    /// What a subject does during the clip.
    Action {
        /// Moves towards the left of the world.
        MoveLeft => "moves left",
        /// Moves towards the right.
        MoveRight => "moves right",
        /// Moves up.
        MoveUp => "moves up",
        /// Moves down.
        MoveDown => "moves down",
        /// Hops up and down.
        Bounce => "bounces",
        /// Turns around its centre.
        Spin => "spins",
        /// Grows to 1.6× its size.
        Grow => "grows",
        /// Shrinks to 0.6× its size.
        Shrink => "shrinks",
        /// Does not move.
        Stay => "stays still",
    }
);

attribute!(
    /// How the camera moves during a shot.
    CameraMotion {
        /// No motion.
        Static => "is static",
        /// Turns left: the scene slides right in the frame.
        PanLeft => "pans left",
        /// Turns right: the scene slides left.
        PanRight => "pans right",
        /// Turns up: the scene slides down.
        TiltUp => "tilts up",
        /// Turns down: the scene slides up.
        TiltDown => "tilts down",
        /// Magnifies the scene.
        ZoomIn => "zooms in",
        /// Shows more of the scene.
        ZoomOut => "zooms out",
    }
);

attribute!(
    /// Framing of a shot.
    ShotType {
        /// The whole 1×1 world square.
        Wide => "wide shot",
        /// 1.3× magnified.
        Medium => "medium shot",
        /// 1.6× magnified.
        CloseUp => "close-up",
    }
);

impl ShotType {
    /// Magnification relative to the wide shot.
    pub fn zoom(self) -> f32 {
        match self {
            ShotType::Wide => 1.0,
            ShotType::Medium => 1.3,
            ShotType::CloseUp => 1.6,
        }
    }
}

attribute!(
    /// Background patterns.
    Pattern {
        /// One colour.
        Flat => "flat",
        /// Top colour to bottom colour.
        Gradient => "gradient",
        /// Squares of two colours (makes pans and tilts visible).
        Checkerboard => "checkerboard",
        /// Diagonal stripes of two colours.
        Stripes => "striped",
    }
);
