//! The vocabulary of the world: shapes, colours, sizes, grid positions, and a scene built from
//! them. Every name here is a word (or two) of the captions, so the tokenizer's vocabulary is
//! derived from these tables (`crate::text::vocabulary`).

use serde::{Deserialize, Serialize};

/// The four shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }
}

/// Colours of shapes. Chosen far apart in RGB, and far from every background colour, so that a
/// pixel's nearest named colour is unambiguous even after a lossy autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Pink,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Cyan,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 40],
            Colour::Orange => [250, 140, 20],
            Colour::Yellow => [245, 225, 40],
            Colour::Green => [30, 170, 60],
            Colour::Cyan => [40, 205, 220],
            Colour::Blue => [40, 80, 225],
            Colour::Purple => [135, 50, 185],
            Colour::Pink => [250, 120, 190],
        }
    }
}

/// Background colours (disjoint from the shape colours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    White,
    Black,
    Gray,
    Brown,
}

impl Background {
    pub const ALL: [Background; 4] = [
        Background::White,
        Background::Black,
        Background::Gray,
        Background::Brown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Background::White => "white",
            Background::Black => "black",
            Background::Gray => "gray",
            Background::Brown => "brown",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [245, 245, 245],
            Background::Black => [15, 15, 20],
            Background::Gray => [125, 125, 125],
            Background::Brown => [110, 70, 35],
        }
    }
}

/// Two sizes; the renderer scales them to the grid cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Radius as a fraction of the grid cell's side.
    pub fn radius_in_cells(self) -> f64 {
        match self {
            Size::Small => 0.22,
            Size::Large => 0.38,
        }
    }
}

/// A cell of the 3×3 grid, row-major from the top left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Position(u8);

impl Position {
    /// The middle cell.
    pub const CENTER: Position = Position(4);

    pub fn new(row: u8, col: u8) -> Option<Self> {
        (row < 3 && col < 3).then_some(Self(row * 3 + col))
    }

    pub fn all() -> impl Iterator<Item = Position> {
        (0..9).map(Position)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn row(self) -> u8 {
        self.0 / 3
    }

    pub fn col(self) -> u8 {
        self.0 % 3
    }

    /// The words after "at"/"in"/"on": "at the top left", "in the center", "on the right".
    pub fn phrase(self) -> &'static str {
        match self.0 {
            0 => "at the top left",
            1 => "at the top",
            2 => "at the top right",
            3 => "on the left",
            4 => "in the center",
            5 => "on the right",
            6 => "at the bottom left",
            7 => "at the bottom",
            _ => "at the bottom right",
        }
    }

    /// The destination phrase of a move: "to the top left", "to the center".
    pub fn destination(self) -> &'static str {
        match self.0 {
            0 => "to the top left",
            1 => "to the top",
            2 => "to the top right",
            3 => "to the left",
            4 => "to the center",
            5 => "to the right",
            6 => "to the bottom left",
            7 => "to the bottom",
            _ => "to the bottom right",
        }
    }
}

impl TryFrom<u8> for Position {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        if v < 9 {
            Ok(Self(v))
        } else {
            Err(format!("position {v} is outside the 3x3 grid (0..=8)"))
        }
    }
}

impl From<Position> for u8 {
    fn from(p: Position) -> u8 {
        p.0
    }
}

/// One shape in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub position: Position,
}

impl Object {
    /// "the red circle": how instructions refer to it (unique within a scene, see `Scene::is_valid`).
    pub fn reference(&self) -> String {
        format!("the {} {}", self.colour.name(), self.shape.name())
    }
}

/// A background and 1–3 shapes in distinct cells, no two with the same (colour, shape).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub background: Background,
    pub objects: Vec<Object>,
}

impl Scene {
    pub const MAX_OBJECTS: usize = 3;

    /// Distinct cells, distinct (colour, shape) references, at most `MAX_OBJECTS`.
    pub fn is_valid(&self) -> bool {
        let n = self.objects.len();
        if n > Self::MAX_OBJECTS {
            return false;
        }
        for (i, a) in self.objects.iter().enumerate() {
            for b in &self.objects[i + 1..] {
                if a.position == b.position || (a.colour == b.colour && a.shape == b.shape) {
                    return false;
                }
            }
        }
        true
    }

    pub fn object_at(&self, position: Position) -> Option<&Object> {
        self.objects.iter().find(|o| o.position == position)
    }

    pub fn free_positions(&self) -> Vec<Position> {
        Position::all()
            .filter(|p| self.object_at(*p).is_none())
            .collect()
    }
}
