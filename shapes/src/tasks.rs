//! Cases: a prompt, an optional input scene, and the exact target scene, for text-to-image and
//! the six edit kinds; and the split between training and held-out evaluation.
//!
//! The held-out split measures generalisation: four (shape, colour) pairs and five
//! (instruction, position) combinations never occur in a training case (not in the input, not in
//! the target, not in the prompt), and every held-out case contains at least one of them.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::text::{SizeWording, caption, describe};
use crate::world::{Background, Colour, Object, Position, Scene, Shape, Size};

/// What a case asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    TextToImage,
    Recolour,
    Background,
    Move,
    Add,
    Remove,
    Resize,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::TextToImage,
        Task::Recolour,
        Task::Background,
        Task::Move,
        Task::Add,
        Task::Remove,
        Task::Resize,
    ];
    pub const EDITS: [Task; 6] = [
        Task::Recolour,
        Task::Background,
        Task::Move,
        Task::Add,
        Task::Remove,
        Task::Resize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::TextToImage => "text-to-image",
            Task::Recolour => "recolour",
            Task::Background => "background",
            Task::Move => "move",
            Task::Add => "add",
            Task::Remove => "remove",
            Task::Resize => "resize",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Training cases or the held-out evaluation cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

/// (shape, colour) pairs that only the held-out split contains.
pub const HELD_OUT_PAIRS: [(Shape, Colour); 4] = [
    (Shape::Star, Colour::Green),
    (Shape::Circle, Colour::Purple),
    (Shape::Triangle, Colour::Orange),
    (Shape::Square, Colour::Cyan),
];

/// (instruction, grid cell it names or acts on) that only the held-out split contains: moving
/// to the top right, adding at the bottom left, removing from the center, recolouring at the
/// bottom right, resizing at the top left.
pub const HELD_OUT_COMBOS: [(Task, u8); 5] = [
    (Task::Move, 2),
    (Task::Add, 6),
    (Task::Remove, 4),
    (Task::Recolour, 8),
    (Task::Resize, 0),
];

fn is_held_out_pair(o: &Object) -> bool {
    HELD_OUT_PAIRS.contains(&(o.shape, o.colour))
}

/// One prompt with its exact answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub task: Task,
    pub prompt: String,
    /// The scene being edited; `None` for text-to-image.
    pub input: Option<Scene>,
    pub target: Scene,
    /// Grid cells whose content the prompt changes (text-to-image: all nine). Everything
    /// outside them must be preserved by an edit.
    pub edited_cells: Vec<Position>,
    /// The cell the instruction names or acts on (`HELD_OUT_COMBOS`); none for background.
    pub focus: Option<Position>,
}

impl Case {
    /// Whether any held-out element occurs in this case.
    pub fn has_held_out_element(&self) -> bool {
        let pair = self
            .input
            .iter()
            .chain(std::iter::once(&self.target))
            .flat_map(|s| &s.objects)
            .any(is_held_out_pair);
        let combo = self
            .focus
            .is_some_and(|p| HELD_OUT_COMBOS.contains(&(self.task, p.index() as u8)));
        pair || combo
    }

    pub fn belongs_to(&self, split: Split) -> bool {
        match split {
            Split::Train => !self.has_held_out_element(),
            Split::HeldOut => self.has_held_out_element(),
        }
    }
}

/// The random stream of case `index` of `split` under `seed`: cases are independent of each
/// other, so any case can be regenerated alone.
fn case_rng(seed: u64, split: Split, index: u64) -> ChaCha8Rng {
    let tag: u64 = match split {
        Split::Train => 0x7472_6169_6e00_0000,
        Split::HeldOut => 0x6865_6c64_0000_0000,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ tag);
    rng.set_stream(index);
    rng
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn wording(rng: &mut ChaCha8Rng) -> SizeWording {
    if rng.random_bool(0.5) {
        SizeWording::Explicit
    } else {
        SizeWording::LargeImplicit
    }
}

fn random_object(rng: &mut ChaCha8Rng, scene: &Scene) -> Option<Object> {
    let free = scene.free_positions();
    if free.is_empty() {
        return None;
    }
    let obj = Object {
        shape: pick(rng, &Shape::ALL),
        colour: pick(rng, &Colour::ALL),
        size: pick(rng, &Size::ALL),
        position: pick(rng, &free),
    };
    let clash = scene
        .objects
        .iter()
        .any(|o| o.shape == obj.shape && o.colour == obj.colour);
    (!clash).then_some(obj)
}

/// A random valid scene with `min..=3` objects.
pub fn random_scene(rng: &mut ChaCha8Rng, min_objects: usize) -> Scene {
    let n = rng.random_range(min_objects..=Scene::MAX_OBJECTS);
    let mut scene = Scene {
        background: pick(rng, &Background::ALL),
        objects: Vec::with_capacity(n),
    };
    while scene.objects.len() < n {
        if let Some(o) = random_object(rng, &scene) {
            scene.objects.push(o);
        }
    }
    scene
}

/// One attempt at a case of `task`; `None` when the drawn scene does not allow it.
fn draw(rng: &mut ChaCha8Rng, task: Task) -> Option<Case> {
    if task == Task::TextToImage {
        let target = random_scene(rng, 1);
        let wordings: Vec<SizeWording> = target.objects.iter().map(|_| wording(rng)).collect();
        return Some(Case {
            task,
            prompt: caption(&target, &wordings),
            input: None,
            target,
            edited_cells: Position::all().collect(),
            focus: None,
        });
    }
    let min = match task {
        Task::Remove => 2,
        _ => 1,
    };
    let input = random_scene(rng, min);
    let mut target = input.clone();
    let i = rng.random_range(0..input.objects.len());
    let obj = input.objects[i];
    let (prompt, edited, focus) = match task {
        Task::TextToImage => return None,
        Task::Recolour => {
            let colour = pick(rng, &Colour::ALL);
            let taken = input
                .objects
                .iter()
                .any(|o| o.shape == obj.shape && o.colour == colour);
            if taken {
                return None;
            }
            target.objects[i].colour = colour;
            let prompt = format!("make {} {}", obj.reference(), colour.name());
            (prompt, vec![obj.position], Some(obj.position))
        }
        Task::Background => {
            let bg = pick(rng, &Background::ALL);
            if bg == input.background {
                return None;
            }
            target.background = bg;
            let prompt = format!("change the background to {}", bg.name());
            (prompt, Position::all().collect(), None)
        }
        Task::Move => {
            let dest = pick(rng, &input.free_positions());
            target.objects[i].position = dest;
            let prompt = format!("move {} {}", obj.reference(), dest.destination());
            (prompt, vec![obj.position, dest], Some(dest))
        }
        Task::Add => {
            if input.objects.len() == Scene::MAX_OBJECTS {
                return None;
            }
            let new = random_object(rng, &input)?;
            target.objects.push(new);
            let prompt = format!("add {}", describe(&new, wording(rng)));
            (prompt, vec![new.position], Some(new.position))
        }
        Task::Remove => {
            target.objects.remove(i);
            let prompt = format!("remove {}", obj.reference());
            (prompt, vec![obj.position], Some(obj.position))
        }
        Task::Resize => {
            let (size, word) = match obj.size {
                Size::Small => (Size::Large, "bigger"),
                Size::Large => (Size::Small, "smaller"),
            };
            target.objects[i].size = size;
            let prompt = format!("make {} {word}", obj.reference());
            (prompt, vec![obj.position], Some(obj.position))
        }
    };
    Some(Case {
        task,
        prompt,
        input: Some(input),
        target,
        edited_cells: edited,
        focus,
    })
}

/// Case `index` of `task` in `split` under `seed`: a pure function of its arguments.
pub fn case(seed: u64, split: Split, task: Task, index: u64) -> Case {
    let mut rng = case_rng(seed ^ ((task as u64) << 56), split, index);
    loop {
        if let Some(c) = draw(&mut rng, task)
            && c.belongs_to(split)
        {
            return c;
        }
    }
}

/// The training mix: 30 % text-to-image, the rest spread evenly over the six edits.
pub fn training_task(seed: u64, index: u64) -> Task {
    let mut rng = case_rng(seed ^ 0x006d_6978, Split::Train, index);
    if rng.random_bool(0.3) {
        Task::TextToImage
    } else {
        pick(&mut rng, &Task::EDITS)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_pure_functions_of_their_index() {
        for task in Task::ALL {
            assert_eq!(
                case(7, Split::Train, task, 3),
                case(7, Split::Train, task, 3)
            );
            assert_ne!(
                case(7, Split::Train, task, 3),
                case(7, Split::Train, task, 4)
            );
        }
    }

    #[test]
    fn splits_are_disjoint_in_their_held_out_elements() {
        for task in Task::ALL {
            for i in 0..200 {
                let train = case(1, Split::Train, task, i);
                assert!(!train.has_held_out_element(), "{train:?}");
                assert!(train.target.is_valid());
                let held = case(1, Split::HeldOut, task, i);
                assert!(held.has_held_out_element(), "{held:?}");
                assert!(held.target.is_valid());
            }
        }
    }

    #[test]
    fn edits_change_only_their_cells() {
        for task in Task::EDITS {
            for i in 0..100 {
                let c = case(2, Split::Train, task, i);
                let input = c.input.as_ref().unwrap();
                for p in Position::all() {
                    if !c.edited_cells.contains(&p) {
                        assert_eq!(input.object_at(p), c.target.object_at(p), "{c:?}");
                    }
                }
                assert_ne!(input, &c.target, "{c:?}");
            }
        }
    }

    #[test]
    fn prompts_fit_the_text_length() {
        // 32 T5 tokens including </s>.
        for task in Task::ALL {
            for i in 0..300 {
                let c = case(3, Split::Train, task, i);
                assert!(crate::text::words(&c.prompt).len() < 32, "{}", c.prompt);
            }
        }
    }
}
