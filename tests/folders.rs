//! Omniglot's archives extracted to plain folders and read as a folder of the user's own
//! images (`fewshot-images`, `[data] folder`) give the built-in loader's data exactly: the same
//! classes in the same order, the same pixels for every drawing, and so the same episodes and
//! the same accuracy for a model evaluated on them.

use std::io::Read;
use std::path::Path;

use candle_core::Device;
use fewshot_cli::checkpoint::Checkpoint;
use fewshot_cli::data::{Data, Folder, Fractions};
use fewshot_e2e::{data_dir, omniglot, report, source_or_skip, workspace_root};
use fewshot_images::{Channels, FolderOptions, ImageFolder};
use fewshot_tasks::{EpisodeSet, Intensity};

/// Extract `archive` (`images_background/<alphabet>/<character>/<file>.png`) under `root/group`.
fn extract(archive: &Path, root: &Path, group: &str) -> usize {
    let file = std::fs::File::open(archive).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        if entry.is_dir() || !name.ends_with(".png") {
            continue;
        }
        // Drop the archive's top folder: the group takes its place.
        let relative = name.split_once('/').map_or(name.as_str(), |(_, rest)| rest);
        let path = root.join(group).join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        n += 1;
    }
    n
}

#[test]
fn omniglot_read_as_a_folder_is_the_built_in_data() {
    let Some(source) = source_or_skip("omniglot_read_as_a_folder_is_the_built_in_data") else { return };
    let dir = data_dir(&source);
    let built_in = omniglot(&source);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("omniglot");
    // Background characters first, as the built-in loader numbers them.
    let files = extract(&dir.join("images_background.zip"), &root, "a-background")
        + extract(&dir.join("images_evaluation.zip"), &root, "b-evaluation");
    assert_eq!(files, 1623 * 20);
    let start = std::time::Instant::now();
    let options = FolderOptions { image_size: 28, channels: Channels::Gray, cache_dir: tmp.path().join("cache") };
    let images = ImageFolder::load(&root, &options, &|_| {}).unwrap();
    let decode_s = start.elapsed().as_secs_f64();
    let classes = images.classes();
    assert_eq!(classes.len(), 1623);
    assert!(classes.iter().all(|c| c.images == 20));
    assert_eq!(classes[0].name, "a-background/Alphabet_of_the_Magi/character01");
    assert_eq!(classes[964].name.split('/').next(), Some("b-evaluation"));
    for class in 0..1623u32 {
        for drawing in 0..20 {
            assert!(
                images.image(class as usize, drawing) == built_in.image(class, drawing),
                "{} drawing {drawing}: other pixels than the built-in loader's",
                classes[class as usize].name
            );
        }
    }
    let start = std::time::Instant::now();
    let again = ImageFolder::load(&root, &options, &|_| {}).unwrap();
    assert!(again.from_cache());
    let cached_s = start.elapsed().as_secs_f64();

    // The shipped model on the 640 course test tasks, through each loader.
    let model = workspace_root().join("models/hw15-boss.safetensors");
    let ckpt = Checkpoint::load(&model, &Device::Cpu).unwrap();
    let settings = ckpt.settings(&model).unwrap();
    let text = std::fs::read_to_string(workspace_root().join("configs/episodes/course-test-5w1s1q-640.json")).unwrap();
    let set = EpisodeSet::from_json(&text, "course-test-5w1s1q-640.json").unwrap();
    let e = &settings.evaluation;
    let params = e.params(&settings.net, &ckpt.params, set.spec.n_way).unwrap();
    let net = settings.net.net(set.spec.n_way);
    let folder = Data::Folder(Folder {
        images,
        intensity: Intensity::Ink,
        kept: (0..1623).collect(),
        fractions: Fractions { train: 0.7, val: 0.15, test: 0.15 },
        pipeline: Default::default(),
    });
    let accuracy = |data: &Data| {
        fewshot_cli::evaluate::evaluate(e.engine, &net, &params, data, set.episodes.iter().cloned(), &e.adaptation)
            .unwrap()
    };
    let (a, b) = (accuracy(&built_in), accuracy(&folder));
    assert_eq!(a.mean.to_bits(), b.mean.to_bits(), "built-in {a} vs folder {b}");
    report(&format!(
        "omniglot as a folder: 1623 classes x 20 drawings, pixels equal to the built-in cache's; decoded in \
         {decode_s:.1} s, from its cache in {cached_s:.2} s; models/hw15-boss on the 640 course tasks: {a} both ways"
    ));
}
