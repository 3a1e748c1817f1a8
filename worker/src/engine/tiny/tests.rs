use super::*;

#[test]
fn placeholder_generation_is_deterministic() {
    let a = TinyWeights::generate(0);
    let b = TinyWeights::generate(0);
    assert_eq!(a.transformer, b.transformer);
}
