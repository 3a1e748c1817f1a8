//! Captions and edit instructions: one fixed grammar, so every prompt maps to exactly one scene
//! (or one edit) and the vocabulary is closed.

use crate::world::{Background, Colour, Object, Position, Scene, Shape, Size};

/// How a caption names an object's size: small shapes always say "small"; large ones say
/// "large" or nothing (a bare "a red circle" is large), so both forms are in the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeWording {
    Explicit,
    LargeImplicit,
}

/// "a small red circle at the top left".
pub fn describe(obj: &Object, wording: SizeWording) -> String {
    let size = match (obj.size, wording) {
        (Size::Large, SizeWording::LargeImplicit) => String::new(),
        (s, _) => format!("{} ", s.name()),
    };
    format!(
        "a {size}{} {} {}",
        obj.colour.name(),
        obj.shape.name(),
        obj.position.phrase()
    )
}

/// The text-to-image caption of a scene, objects in scene order:
/// "a red circle at the top left and a small blue square in the center on a white background".
pub fn caption(scene: &Scene, wordings: &[SizeWording]) -> String {
    let parts: Vec<String> = scene
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| describe(o, wordings.get(i).copied().unwrap_or(SizeWording::Explicit)))
        .collect();
    let listed = match parts.as_slice() {
        [] => String::from("nothing"),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(" , ")),
    };
    format!("{listed} on a {} background", scene.background.name())
}

/// Every word a caption or instruction can contain, sorted; the tokenizer's vocabulary.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = [
        "a",
        "the",
        "at",
        "in",
        "on",
        "to",
        "and",
        ",",
        "top",
        "bottom",
        "left",
        "right",
        "center",
        "background",
        "make",
        "change",
        "move",
        "add",
        "remove",
        "bigger",
        "smaller",
        "nothing",
    ]
    .iter()
    .map(|w| (*w).to_string())
    .collect();
    words.extend(Shape::ALL.iter().map(|s| s.name().to_string()));
    words.extend(Colour::ALL.iter().map(|c| c.name().to_string()));
    words.extend(Background::ALL.iter().map(|b| b.name().to_string()));
    words.extend(Size::ALL.iter().map(|s| s.name().to_string()));
    for p in Position::all() {
        words.extend(p.phrase().split(' ').map(str::to_string));
        words.extend(p.destination().split(' ').map(str::to_string));
    }
    words.sort();
    words.dedup();
    words
}

/// Splits a prompt into the words the tokenizer sees (lower case; "," is a word).
pub fn words(prompt: &str) -> Vec<String> {
    prompt
        .to_lowercase()
        .replace(',', " , ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(pos: u8, shape: Shape, colour: Colour, size: Size) -> Object {
        Object {
            shape,
            colour,
            size,
            position: Position::try_from(pos).unwrap(),
        }
    }

    #[test]
    fn captions_read_like_the_examples() {
        let scene = Scene {
            background: Background::White,
            objects: vec![
                at(0, Shape::Circle, Colour::Red, Size::Large),
                at(8, Shape::Square, Colour::Blue, Size::Large),
            ],
        };
        assert_eq!(
            caption(&scene, &[SizeWording::LargeImplicit; 2]),
            "a red circle at the top left and a blue square at the bottom right on a white background"
        );
        let three = Scene {
            background: Background::Black,
            objects: vec![
                at(4, Shape::Star, Colour::Green, Size::Small),
                at(3, Shape::Triangle, Colour::Pink, Size::Large),
                at(2, Shape::Circle, Colour::Cyan, Size::Large),
            ],
        };
        assert_eq!(
            caption(&three, &[SizeWording::Explicit; 3]),
            "a small green star in the center , a large pink triangle on the left and a large \
             cyan circle at the top right on a black background"
        );
    }

    #[test]
    fn every_caption_word_is_in_the_vocabulary() {
        let vocab = vocabulary();
        let scene = Scene {
            background: Background::Brown,
            objects: vec![at(7, Shape::Star, Colour::Purple, Size::Small)],
        };
        for w in words(&caption(&scene, &[SizeWording::Explicit])) {
            assert!(vocab.contains(&w), "{w}");
        }
    }
}
