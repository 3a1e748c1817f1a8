//! The storyboards shipped in cli/storyboards: each parses, and the shapes one has one exact
//! reference frame per turn.

use std::path::{Path, PathBuf};

use kontext::storyboard::Storyboard;

fn storyboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("storyboards")
}

#[test]
fn every_shipped_storyboard_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(storyboards_dir()).expect("cli/storyboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Storyboard::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "fox.yaml and shapes.yaml");
}

#[test]
fn the_shapes_storyboard_has_one_distinct_reference_per_turn() {
    let path = storyboards_dir().join("shapes.yaml");
    let board = Storyboard::load(&path).expect("shapes.yaml");
    let refs = board
        .reference_frames(&path, &storyboards_dir())
        .expect("frames");
    let input = refs.input.expect("starts from an input image");
    assert_eq!(refs.frames.len(), board.turn_count());
    let mut previous = &input;
    for (i, frame) in refs.frames.iter().enumerate() {
        assert_eq!(frame.dimensions(), (96, 96), "reference {}", i + 1);
        assert_ne!(frame, previous, "turn {} changes the frame", i + 1);
        previous = frame;
    }
    let short = "input: shapes/input.png\nturns: [a, b]\nreferences: [shapes/reference-1.png]\n";
    let e = Storyboard::parse(short, &path)
        .expect("parses")
        .reference_frames(&path, &storyboards_dir())
        .expect_err("one reference for two turns");
    assert!(e.to_string().contains("1 frames for 2 turns"), "{e}");
}
