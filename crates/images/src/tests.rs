use std::path::Path;

use super::*;

/// A `w x h` image of one colour, as PNG or JPEG by `path`'s extension.
fn write_image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

fn options(dir: &Path, size: u32, channels: Channels) -> FolderOptions {
    FolderOptions { image_size: size, channels, cache_dir: dir.join("cache") }
}

fn err(root: &Path) -> String {
    ImageFolder::load(root, &options(root.parent().unwrap(), 8, Channels::Gray), &|_| {}).unwrap_err().to_string()
}

#[test]
fn nested_classes_of_any_size_and_format_load_resized_channels_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shapes");
    write_image(&root.join("warm/red/a.png"), 30, 20, [255, 0, 0]);
    write_image(&root.join("warm/red/b.JPG"), 10, 10, [250, 0, 0]);
    write_image(&root.join("cool/blue/x.jpeg"), 64, 64, [0, 0, 255]);
    std::fs::write(root.join("cool/blue/.DS_Store"), b"hidden files are skipped").unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let f = ImageFolder::load(&root, &options(tmp.path(), 16, Channels::Rgb), &|n| {
        done.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    let names: Vec<(&str, usize)> = f.classes().iter().map(|c| (c.name.as_str(), c.images)).collect();
    assert_eq!(names, [("cool/blue", 1), ("warm/red", 2)]);
    assert_eq!(done.into_inner(), 3, "progress reached every image");
    let plane = 16 * 16;
    let blue = f.image(0, 0);
    assert_eq!(blue.len(), 3 * plane);
    // JPEG: within its loss.
    let near = |v: u8, want: u8| v.abs_diff(want) <= 3;
    assert!(
        blue[..2 * plane].iter().all(|&v| near(v, 0)) && blue[2 * plane..].iter().all(|&v| near(v, 255)),
        "RGB planes"
    );
    let red = f.image(1, 0);
    assert!(red[..plane].iter().all(|&v| v == 255) && red[plane..].iter().all(|&v| v == 0));
    assert!(f.image(1, 1)[..plane].iter().all(|&v| near(v, 250)));
    // Gray: luminance of the colour.
    let gray = ImageFolder::load(&root, &options(tmp.path(), 8, Channels::Gray), &|_| {}).unwrap();
    assert_eq!(gray.image(1, 0).len(), 64);
    let luma = image::Rgb([255u8, 0, 0]);
    let want = image::buffer::ConvertBuffer::<image::GrayImage>::convert(&image::RgbImage::from_pixel(1, 1, luma));
    assert_eq!(gray.image(1, 0)[0], want.as_raw()[0]);
}

#[test]
fn gray_images_get_the_omniglot_cache_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("d/c/0.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::GrayImage::from_fn(105, 105, |x, y| image::Luma([if (x / 7 + y / 5) % 3 == 0 { 0 } else { 255 }]));
    img.save(&path).unwrap();
    let got = decode(&path, 28, Channels::Gray).unwrap();
    assert_eq!(got, omniglot_data::resize_gray(&img, 28));
}

#[test]
fn the_cache_is_read_back_and_rebuilt_when_the_folder_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    write_image(&root.join("a/1.png"), 12, 12, [10, 10, 10]);
    write_image(&root.join("b/1.png"), 12, 12, [200, 200, 200]);
    let opts = options(tmp.path(), 8, Channels::Gray);
    let first = ImageFolder::load(&root, &opts, &|_| {}).unwrap();
    assert!(!first.from_cache() && first.cache_file().exists());
    let again = ImageFolder::load(&root, &opts, &|_| {}).unwrap();
    assert!(again.from_cache(), "an unchanged folder is read from the cache");
    assert_eq!(again.image(1, 0), first.image(1, 0));
    // A file modified (new contents, new length): decoded again, old cache removed.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_image(&root.join("b/1.png"), 40, 40, [90, 90, 90]);
    let changed = ImageFolder::load(&root, &opts, &|_| {}).unwrap();
    assert!(!changed.from_cache());
    assert!(changed.image(1, 0).iter().all(|&v| v == 90));
    assert!(!first.cache_file().exists() || first.cache_file() == changed.cache_file());
    // A file added.
    write_image(&root.join("a/2.png"), 12, 12, [0, 0, 0]);
    let added = ImageFolder::load(&root, &opts, &|_| {}).unwrap();
    assert!(!added.from_cache());
    assert_eq!(added.classes()[0].images, 2);
    let caches = std::fs::read_dir(tmp.path().join("cache")).unwrap().count();
    assert_eq!(caches, 2, "one cache and its manifest: older states are removed");
}

#[test]
fn split_folders_give_the_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    for (split, class) in [("train", "a"), ("train", "b"), ("val", "c"), ("test", "g/d")] {
        write_image(&root.join(split).join(class).join("0.png"), 5, 5, [0, 0, 0]);
    }
    let f = ImageFolder::load(&root, &options(tmp.path(), 4, Channels::Gray), &|_| {}).unwrap();
    let got: Vec<(Option<Split>, &str)> = f.classes().iter().map(|c| (c.split, c.name.as_str())).collect();
    assert_eq!(
        got,
        [(Some(Split::Train), "a"), (Some(Split::Train), "b"), (Some(Split::Val), "c"), (Some(Split::Test), "g/d")]
    );
    // A class in two splits.
    write_image(&root.join("test/a/0.png"), 5, 5, [0, 0, 0]);
    assert!(err(&root).contains("the class a is in both train/ and test/"), "{}", err(&root));
    std::fs::remove_dir_all(root.join("test/a")).unwrap();
    // A folder beside the split folders.
    write_image(&root.join("extra/0.png"), 5, 5, [0, 0, 0]);
    let e = err(&root);
    assert!(e.contains("extra") && e.contains("sits beside train/"), "{e}");
}

#[test]
fn bad_folders_are_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing and empty.
    let missing = tmp.path().join("nowhere");
    assert!(err(&missing).contains("nowhere") && err(&missing).contains("reading the image folder"));
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    assert!(err(&empty).contains("holds no class"), "{}", err(&empty));
    // Only files that are not images: no class.
    let strays = tmp.path().join("strays");
    std::fs::create_dir_all(strays.join("a")).unwrap();
    std::fs::write(strays.join("a/notes.txt"), "x").unwrap();
    assert!(err(&strays).contains("holds no class"), "{}", err(&strays));
    // Images beside folders.
    let mixed = tmp.path().join("mixed");
    write_image(&mixed.join("a/0.png"), 4, 4, [0, 0, 0]);
    write_image(&mixed.join("a/sub/0.png"), 4, 4, [0, 0, 0]);
    let e = err(&mixed);
    assert!(e.contains("mixed/a") && e.contains("holds both images (1) and folders (1)"), "{e}");
    // An unreadable image.
    let broken = tmp.path().join("broken");
    write_image(&broken.join("a/0.png"), 4, 4, [0, 0, 0]);
    std::fs::write(broken.join("a/1.png"), b"not a png at all").unwrap();
    let e = err(&broken);
    assert!(e.contains("a/1.png") && e.contains("cannot read this image"), "{e}");
    // A file as the root.
    assert!(err(&broken.join("a/0.png")).contains("is a file, not a folder"));
}

#[test]
fn files_that_are_not_images_are_skipped_and_listed_as_tiny_imagenet_ships() {
    // Tiny ImageNet as distributed: train/<wnid>/images/*.JPEG beside train/<wnid>/<wnid>_boxes.txt;
    // the class is <wnid>/images, the boxes file is left out, and a folder of notes is no class.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny");
    for (wnid, colour) in [("n01", [200, 0, 0]), ("n02", [0, 200, 0])] {
        for i in 0..3 {
            write_image(&root.join(format!("train/{wnid}/images/{wnid}_{i}.JPEG")), 6, 6, colour);
        }
        std::fs::write(root.join(format!("train/{wnid}/{wnid}_boxes.txt")), "0 0 6 6").unwrap();
    }
    std::fs::create_dir_all(root.join("train/docs")).unwrap();
    std::fs::write(root.join("train/docs/README.md"), "notes").unwrap();
    let scan = crate::scan(&root).unwrap();
    let names: Vec<&str> = scan.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["n01/images", "n02/images"]);
    assert!(scan.classes.iter().all(|c| c.files.len() == 3));
    let skipped: Vec<String> =
        scan.skipped.iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
    assert_eq!(skipped, ["train/docs/README.md", "train/n01/n01_boxes.txt", "train/n02/n02_boxes.txt"]);
    let options = FolderOptions { image_size: 4, channels: Channels::Rgb, cache_dir: tmp.path().join("cache") };
    let folder = ImageFolder::load(&root, &options, &|_| {}).unwrap();
    assert_eq!((folder.classes().len(), folder.skipped().len()), (2, 3));
}
