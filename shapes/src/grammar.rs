//! Reading prompts of the world's grammar back: a caption into its scene, an instruction into
//! the edit it asks for. Storyboards and tests use it to know the exact answer of a prompt they
//! wrote by hand ("make the red circle green"), the same answer `tasks::case` would give.

use crate::tasks::Task;
use crate::text::words;
use crate::world::{Background, Colour, Object, Position, Scene, Shape, Size};

/// Why a prompt is not in the world's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("{0:?} is not a caption or instruction of the shapes world")]
    Unparsed(String),
    #[error("the scene has no {0}")]
    NoSuchObject(String),
    #[error("{0} is already taken")]
    Occupied(String),
}

fn colour(w: &str) -> Option<Colour> {
    Colour::ALL.into_iter().find(|c| c.name() == w)
}

fn shape(w: &str) -> Option<Shape> {
    Shape::ALL.into_iter().find(|s| s.name() == w)
}

fn background(w: &str) -> Option<Background> {
    Background::ALL.into_iter().find(|b| b.name() == w)
}

/// Parses a position phrase at the start of `ws` ("at the top left", "to the center");
/// returns it and the number of words used.
fn position(ws: &[String], destination: bool) -> Option<(Position, usize)> {
    let mut best: Option<(Position, usize)> = None;
    for p in Position::all() {
        let phrase = if destination {
            p.destination()
        } else {
            p.phrase()
        };
        let pw: Vec<&str> = phrase.split(' ').collect();
        if ws.len() >= pw.len()
            && ws.iter().zip(&pw).all(|(a, b)| a == b)
            && best.is_none_or(|(_, n)| pw.len() > n)
        {
            best = Some((p, pw.len()));
        }
    }
    best
}

/// "a [small|large] red circle at the top left" at the start of `ws`; returns the object and
/// the words used.
fn object(ws: &[String]) -> Option<(Object, usize)> {
    let mut i = 0;
    if ws.first()? != "a" {
        return None;
    }
    i += 1;
    let size = match ws.get(i)?.as_str() {
        "small" => {
            i += 1;
            Size::Small
        }
        "large" => {
            i += 1;
            Size::Large
        }
        _ => Size::Large,
    };
    let colour = colour(ws.get(i)?)?;
    let shape = shape(ws.get(i + 1)?)?;
    let (position, n) = position(&ws[i + 2..], false)?;
    Some((
        Object {
            shape,
            colour,
            size,
            position,
        },
        i + 2 + n,
    ))
}

/// Reads a caption ("a red circle at the top left and a small blue square in the center on a
/// white background") into its scene.
pub fn parse_caption(prompt: &str) -> Result<Scene, GrammarError> {
    let unparsed = || GrammarError::Unparsed(prompt.to_string());
    let ws = words(prompt);
    let mut objects = Vec::new();
    let mut i = 0;
    loop {
        let (o, n) = object(&ws[i..]).ok_or_else(unparsed)?;
        objects.push(o);
        i += n;
        match ws.get(i).map(String::as_str) {
            Some("," | "and") => i += 1,
            _ => break,
        }
    }
    let tail: Vec<&str> = ws[i..].iter().map(String::as_str).collect();
    let bg = match tail.as_slice() {
        ["on", "a", b, "background"] => background(b).ok_or_else(unparsed)?,
        _ => return Err(unparsed()),
    };
    let scene = Scene {
        background: bg,
        objects,
    };
    if scene.is_valid() {
        Ok(scene)
    } else {
        Err(unparsed())
    }
}

/// "the red circle" at the start of `ws`: the index of that object in `scene`.
fn reference(scene: &Scene, ws: &[String]) -> Result<Option<usize>, GrammarError> {
    if ws.len() < 3 || ws[0] != "the" {
        return Ok(None);
    }
    let (Some(c), Some(s)) = (colour(&ws[1]), shape(&ws[2])) else {
        return Ok(None);
    };
    scene
        .objects
        .iter()
        .position(|o| o.colour == c && o.shape == s)
        .map(Some)
        .ok_or_else(|| GrammarError::NoSuchObject(format!("{} {}", c.name(), s.name())))
}

/// Applies an instruction to `scene`: the scene it asks for, the kind of edit, and the cells it
/// changes (the same as `tasks::case` records for that edit).
pub fn apply(scene: &Scene, prompt: &str) -> Result<(Scene, Task, Vec<Position>), GrammarError> {
    let unparsed = || GrammarError::Unparsed(prompt.to_string());
    let ws = words(prompt);
    let mut out = scene.clone();
    let first = ws.first().map(String::as_str);
    let result = match first {
        Some("make") => {
            let i = reference(scene, &ws[1..])?.ok_or_else(unparsed)?;
            let obj = scene.objects[i];
            match ws.get(4).map(String::as_str) {
                Some("bigger") if ws.len() == 5 => out.objects[i].size = Size::Large,
                Some("smaller") if ws.len() == 5 => out.objects[i].size = Size::Small,
                Some(w) if ws.len() == 5 => {
                    let c = colour(w).ok_or_else(unparsed)?;
                    if scene
                        .objects
                        .iter()
                        .any(|o| o.shape == obj.shape && o.colour == c && o != &obj)
                    {
                        return Err(GrammarError::Occupied(format!("{w} {}", obj.shape.name())));
                    }
                    out.objects[i].colour = c;
                    return Ok((out, Task::Recolour, vec![obj.position]));
                }
                _ => return Err(unparsed()),
            }
            (Task::Resize, vec![obj.position])
        }
        Some("change") => match ws.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["change", "the", "background", "to", b] => {
                out.background = background(b).ok_or_else(unparsed)?;
                (Task::Background, Position::all().collect())
            }
            _ => return Err(unparsed()),
        },
        Some("move") => {
            let i = reference(scene, &ws[1..])?.ok_or_else(unparsed)?;
            let (dest, n) = position(&ws[4..], true).ok_or_else(unparsed)?;
            if 4 + n != ws.len() {
                return Err(unparsed());
            }
            if scene.object_at(dest).is_some() {
                return Err(GrammarError::Occupied(dest.destination().to_string()));
            }
            let from = scene.objects[i].position;
            out.objects[i].position = dest;
            (Task::Move, vec![from, dest])
        }
        Some("add") => {
            let (o, n) = object(&ws[1..]).ok_or_else(unparsed)?;
            if 1 + n != ws.len() {
                return Err(unparsed());
            }
            if scene.object_at(o.position).is_some() || scene.objects.len() >= Scene::MAX_OBJECTS {
                return Err(GrammarError::Occupied(o.position.phrase().to_string()));
            }
            out.objects.push(o);
            (Task::Add, vec![o.position])
        }
        Some("remove") if ws.len() == 4 => {
            let i = reference(scene, &ws[1..])?.ok_or_else(unparsed)?;
            let removed = out.objects.remove(i);
            (Task::Remove, vec![removed.position])
        }
        _ => return Err(unparsed()),
    };
    Ok((out, result.0, result.1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tasks::{Split, case};

    #[test]
    fn every_generated_prompt_reads_back_to_its_answer() {
        for split in [Split::Train, Split::HeldOut] {
            for task in Task::ALL {
                for i in 0..200 {
                    let c = case(21, split, task, i);
                    match &c.input {
                        None => assert_eq!(parse_caption(&c.prompt).unwrap(), c.target, "{c:?}"),
                        Some(input) => {
                            let (scene, t, cells) = apply(input, &c.prompt).unwrap();
                            assert_eq!(scene, c.target, "{}", c.prompt);
                            assert_eq!(t, c.task);
                            assert_eq!(cells, c.edited_cells);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prompts_outside_the_grammar_are_refused() {
        let scene = parse_caption("a red circle at the top left on a white background").unwrap();
        for bad in [
            "make the cat red",
            "remove the blue square",
            "move the red circle to space",
        ] {
            assert!(apply(&scene, bad).is_err(), "{bad}");
        }
        assert!(parse_caption("a dog on a white background").is_err());
    }
}
