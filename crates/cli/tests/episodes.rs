//! The shipped 640 course test tasks are exactly what their seed regenerates.

use std::path::Path;

use fewshot_tasks::{DrawingSplit, EpisodeSet, EpisodeSpec, Protocol};

const FILE: &str = "../../configs/episodes/course-test-5w1s1q-640.json";
const SEED: u64 = 640;

fn regenerate() -> EpisodeSet {
    let spec = EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any };
    EpisodeSet::generate(
        Protocol::Course.splits(0).test,
        spec,
        640,
        SEED,
        "course test tasks: 640 5-way 1-shot 1-query episodes from the Omniglot evaluation set \
         (characters 964..1623 = evaluation characters 0..659 in cache order)",
    )
    .unwrap()
}

#[test]
fn shipped_test_tasks_regenerate_from_their_seed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let set = regenerate();
    if std::env::var_os("WRITE_EPISODES").is_some() {
        std::fs::write(&path, set.to_json()).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, set.to_json(), "{} differs from its regeneration", path.display());
    let parsed = EpisodeSet::from_json(&text, FILE).unwrap();
    assert_eq!(parsed.episodes.len(), 640);
    assert!(parsed.episodes.iter().all(|e| e.support.iter().chain(&e.query).all(|x| x.class.character >= 964)));
}
