//! `fewshot predict`: label the query images of tasks stored as folders of images.
//!
//! Two layouts. The course's test set: `DIR/support/NNNN/image_C.png`, one labelled image per
//! class `C` (0-based), and `DIR/query/NNNN/image_J.png`; the CSV has one row `id,class` per
//! query image, `id` being `NNNN_J`. Photos: `DIR/support/<class name>/` folders of any number
//! of images each (PNG or JPEG, any size), and `DIR/query/` holding the images to label (one
//! task) or `DIR/query/<task>/` folders of them (several tasks, one support set); the CSV has
//! one row `file,class` per query image, `file` its path below `query/` and `class` its class
//! folder's name.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use fewshot_meta::{Adaptation, Engine, TaskInputs};
use fewshot_model::ConvNetConfig;

/// One task read from disk.
#[derive(Debug)]
pub struct FolderTask {
    /// The folder name `NNNN` (lossily, where it is not UTF-8).
    pub id: String,
    /// The folder name as the file system has it.
    pub folder: std::ffi::OsString,
    /// `(class, pixels)` of each support image, ink = 1.
    pub support: Vec<(u32, Vec<f32>)>,
    /// `(J, pixels)` of each query image (photos: its path below `query/`).
    pub query: Vec<(String, Vec<f32>)>,
    /// The classes' folder names (photos); empty for the course layout, whose classes are
    /// numbers.
    pub class_names: Vec<String>,
}

impl FolderTask {
    /// Number of classes.
    pub fn n_way(&self) -> usize {
        if self.class_names.is_empty() { self.support.len() } else { self.class_names.len() }
    }
}

/// Read an image of any size, gray or colour, as ink intensities at `size` x `size`, resized
/// the way the dataset cache is. Expects dark ink on a light background; transparent pixels are
/// paper (an alpha channel is composited onto white first).
pub fn read_image(path: &Path, size: u32) -> anyhow::Result<Vec<f32>> {
    let img = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    let img = if img.color().has_alpha() {
        let mut rgba = img.into_rgba8();
        for p in rgba.pixels_mut() {
            let a = p.0[3] as f32 / 255.0;
            for c in &mut p.0[..3] {
                *c = (*c as f32 * a + 255.0 * (1.0 - a)).round() as u8;
            }
            p.0[3] = 255;
        }
        image::DynamicImage::ImageRgba8(rgba).into_luma8()
    } else {
        img.into_luma8()
    };
    Ok(omniglot_data::resize_gray(&img, size).into_iter().map(fewshot_tasks::ink_intensity).collect())
}

/// How a model reads its images: their side, channels, intensity mapping and normalisation
/// (from its config's `[data]` and `[model]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Side of the square images.
    pub size: u32,
    /// Channels (1 or 3).
    pub channels: usize,
    /// How stored values become inputs.
    pub intensity: fewshot_tasks::Intensity,
    /// Per-channel normalisation after the intensity (`data.normalize`).
    pub normalize: Option<fewshot_tasks::Normalize>,
}

impl Reading {
    /// How the model of `settings` reads images.
    pub fn of(settings: &crate::settings::Settings) -> Reading {
        let d = &settings.data;
        Reading {
            size: d.image_size,
            channels: d.channels,
            intensity: d.intensity,
            normalize: d.normalize.given().cloned(),
        }
    }
}

/// Read an image as the model that `reading` describes sees it: Omniglot's way
/// ([`read_image`]) for gray ink models, else as the image-folder cache decodes its images
/// (`fewshot_images::decode`), mapped by the intensity.
pub fn read_image_as(path: &Path, reading: &Reading) -> anyhow::Result<Vec<f32>> {
    use fewshot_tasks::Intensity;
    let mut values = if reading.channels == 1 && reading.intensity == Intensity::Ink {
        read_image(path, reading.size)?
    } else {
        let channels = fewshot_images::Channels::from_count(reading.channels)?;
        let raw = fewshot_images::decode(path, reading.size, channels)?;
        raw.into_iter().map(|v| reading.intensity.value(v)).collect()
    };
    if let Some(n) = &reading.normalize {
        n.apply(&mut values, (reading.size as usize).pow(2));
    }
    Ok(values)
}

/// `image_<X>.png` files of a folder, sorted by their suffix, as `(suffix, path)`.
fn images_in(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading folder {}", dir.display()))?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if let (true, Some(suffix)) = (is_png, stem.strip_prefix("image_")) {
            out.push((suffix.to_owned(), path));
        } else {
            tracing::warn!("skipping {}: not an image_<N>.png file", path.display());
        }
    }
    out.sort_by(|a, b| (a.0.parse::<u64>().ok(), &a.0).cmp(&(b.0.parse::<u64>().ok(), &b.0)));
    Ok(out)
}

/// Read every task under `dir`, in the course layout or the photo layout (see the module's
/// docs; `is_course_layout` decides which).
pub fn read_tasks(dir: &Path, reading: &Reading) -> anyhow::Result<Vec<FolderTask>> {
    // The folder itself first: a file, a missing path or a symlink cycle is named as such.
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            bail!("--tasks {} is a file, not a folder: give the folder that holds support/ and query/", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("--tasks {}: cannot open it as a folder", dir.display())),
    }
    let support_root = dir.join("support");
    let query_root = dir.join("query");
    for d in [&support_root, &query_root] {
        if !d.is_dir() {
            bail!(
                "{} is missing: expected DIR/support/<class>/ folders of images and DIR/query/ (images, or \
                 folders of them), or the course layout DIR/support/NNNN/image_C.png and DIR/query/NNNN/image_J.png",
                d.display()
            );
        }
    }
    if !is_course_layout(&support_root, &query_root)? {
        return read_photo_tasks(&support_root, &query_root, reading);
    }
    // Folder names as the file system has them (not every name is UTF-8); the CSV shows them
    // lossily.
    let folders = |root: &Path| -> anyhow::Result<Vec<std::ffi::OsString>> {
        let mut names: Vec<_> = std::fs::read_dir(root)
            .with_context(|| format!("reading {}", root.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        Ok(names)
    };
    let (support_ids, query_ids) = (folders(&support_root)?, folders(&query_root)?);
    // One rule for a task folder on one side only: skipped, with a warning that names it.
    for (ids, other_ids, root, other_root, side) in [
        (&query_ids, &support_ids, &query_root, &support_root, "support"),
        (&support_ids, &query_ids, &support_root, &query_root, "query"),
    ] {
        for id in ids.iter().filter(|id| !other_ids.contains(id)) {
            tracing::warn!(
                "skipping {}: no {side} folder {} for it",
                root.join(id).display(),
                other_root.join(id).display()
            );
        }
    }
    let ids: Vec<_> = support_ids.into_iter().filter(|id| query_ids.contains(id)).collect();
    if ids.is_empty() {
        bail!("{} and {} hold no task folders of the same name", support_root.display(), query_root.display());
    }
    let mut tasks = Vec::with_capacity(ids.len());
    for os_id in ids {
        let sdir = support_root.join(&os_id);
        let qdir = query_root.join(&os_id);
        let id = os_id.to_string_lossy().into_owned();
        let mut support = Vec::new();
        for (suffix, path) in images_in(&sdir)? {
            let class: u32 = suffix
                .parse()
                .with_context(|| format!("{}: expected image_C.png with C a class number", path.display()))?;
            support.push((class, read_image_as(&path, reading)?));
        }
        let n_way = support.len();
        let classes: Vec<u32> = support.iter().map(|(c, _)| *c).collect();
        if classes != (0..n_way as u32).collect::<Vec<_>>() {
            bail!(
                "{}: support images must be image_0.png .. image_{}.png, one per class; found classes {classes:?}",
                sdir.display(),
                n_way.saturating_sub(1)
            );
        }
        let query = images_in(&qdir)?
            .into_iter()
            .map(|(j, p)| Ok((j, read_image_as(&p, reading)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if query.is_empty() {
            bail!("{} holds no image_J.png files", qdir.display());
        }
        tasks.push(FolderTask { id, folder: os_id, support, query, class_names: Vec::new() });
    }
    let n_way = tasks[0].support.len();
    if let Some(odd) = tasks.iter().find(|t| t.support.len() != n_way) {
        bail!(
            "{} has {} classes but {} has {n_way}; all tasks must have the same number of classes",
            support_root.join(&odd.folder).display(),
            odd.support.len(),
            support_root.join(&tasks[0].folder).display()
        );
    }
    Ok(tasks)
}

/// The visible entries of `dir`, sorted, split into folders and files.
fn listing(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    entries.sort();
    Ok(entries.into_iter().partition(|p| p.is_dir()))
}

/// Whether `support/` and `query/` are the course's layout: `query/` holds no image itself,
/// and every image in the support folders is an `image_<N>.png` (folders with none, and files
/// that are not images, are left to the course reader's warnings).
fn is_course_layout(support_root: &Path, query_root: &Path) -> anyhow::Result<bool> {
    let (_, direct) = listing(query_root)?;
    if direct.iter().any(|p| fewshot_images::is_image(p)) {
        return Ok(false);
    }
    let (folders, _) = listing(support_root)?;
    for folder in &folders {
        let (_, files) = listing(folder)?;
        let numbered = |p: &PathBuf| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
                && stem.strip_prefix("image_").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if !files.iter().filter(|p| fewshot_images::is_image(p)).all(numbered) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The images of `dir` (by extension), sorted; other files are named in a warning.
fn photos_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (_, files) = listing(dir)?;
    let (images, others): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|p| fewshot_images::is_image(p));
    for other in others {
        tracing::warn!("skipping {}: not an image ({})", other.display(), fewshot_images::IMAGE_EXTENSIONS.join(", "));
    }
    Ok(images)
}

/// The photo layout: `support/<class>/` folders of images, `query/` of images or of task
/// folders of images; every task shares the support set.
fn read_photo_tasks(support_root: &Path, query_root: &Path, reading: &Reading) -> anyhow::Result<Vec<FolderTask>> {
    let (class_folders, stray) = listing(support_root)?;
    if !stray.is_empty() {
        bail!(
            "{}: holds files ({}); the photo layout wants one folder of images per class, named by the class \
             (support/cat/1.jpg, support/dog/2.jpg, ...)",
            support_root.display(),
            stray[0].display()
        );
    }
    if class_folders.len() < 2 {
        bail!(
            "{} holds {} class folder(s): give at least two (support/<class name>/ with its images)",
            support_root.display(),
            class_folders.len()
        );
    }
    let mut support = Vec::new();
    let mut class_names = Vec::new();
    for (class, folder) in class_folders.iter().enumerate() {
        let images = photos_in(folder)?;
        if images.is_empty() {
            bail!(
                "{}: a class folder with no images ({})",
                folder.display(),
                fewshot_images::IMAGE_EXTENSIONS.join(", ")
            );
        }
        for path in images {
            support.push((class as u32, read_image_as(&path, reading)?));
        }
        class_names.push(folder.file_name().unwrap_or_default().to_string_lossy().into_owned());
    }
    let (task_folders, direct) = listing(query_root)?;
    let mut groups: Vec<(String, std::ffi::OsString, Vec<PathBuf>)> = Vec::new();
    if !direct.is_empty() {
        groups.push((String::new(), std::ffi::OsString::new(), photos_in(query_root)?));
    }
    for folder in task_folders {
        let name = folder.file_name().unwrap_or_default().to_owned();
        groups.push((name.to_string_lossy().into_owned(), name, photos_in(&folder)?));
    }
    let mut tasks = Vec::new();
    for (id, folder, files) in groups.into_iter().filter(|g| !g.2.is_empty()) {
        let query = files
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(query_root).unwrap_or(p).to_string_lossy().replace('\\', "/");
                Ok((rel, read_image_as(p, reading)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        tasks.push(FolderTask { id, folder, support: support.clone(), query, class_names: class_names.clone() });
    }
    if tasks.is_empty() {
        bail!("{} holds no images to label ({})", query_root.display(), fewshot_images::IMAGE_EXTENSIONS.join(", "));
    }
    Ok(tasks)
}

/// One labelled query image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// `NNNN_J`.
    pub id: String,
    /// The most probable class.
    pub class: u32,
    /// The softmax probability of each class.
    pub probabilities: Vec<f32>,
}

/// Predicted class (and class probabilities) of every query image, task by task.
pub fn predict(
    net: &ConvNetConfig,
    params: &fewshot_meta::MetaParams,
    tasks: &[FolderTask],
    adaptation: &Adaptation,
) -> anyhow::Result<Vec<Prediction>> {
    let (size, c) = (net.image_size, net.in_channels);
    let mut rows = Vec::new();
    for task in tasks {
        // Tasks may differ in query count: one task per batched computation.
        let ns = task.support.len();
        let nq = task.query.len();
        let support: Vec<f32> = task.support.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let labels: Vec<u32> = task.support.iter().map(|(c, _)| *c).collect();
        let query: Vec<f32> = task.query.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let support = Tensor::from_vec(support, (1, ns, c, size, size), &Device::Cpu)?;
        let labels = Tensor::from_vec(labels, (1, ns), &Device::Cpu)?;
        let query = Tensor::from_vec(query, (1, nq, c, size, size), &Device::Cpu)?;
        let inputs = TaskInputs { support_images: &support, support_labels: &labels, query_images: &query };
        let logits = Engine::default().adapted_logits(net, params, inputs, adaptation)?;
        let predicted = logits.argmax(2)?.squeeze(0)?.to_vec1::<u32>()?;
        let logits = logits.squeeze(0)?.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        for (((j, _), class), row) in task.query.iter().zip(predicted).zip(logits) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|l| (l - max).exp()).sum();
            let probabilities = row.iter().map(|l| ((l - max).exp() / sum) as f32).collect();
            let id = if task.class_names.is_empty() { format!("{}_{j}", task.id) } else { j.clone() };
            rows.push(Prediction { id, class, probabilities });
        }
    }
    Ok(rows)
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// Write `bytes` to `out`: `-` is standard output; a regular file (or a symlink to one, or a
/// new path) is replaced atomically, through the symlink; anything else that exists (a
/// device, a pipe) is written directly, never replaced. Under MPI, rank 0 alone writes.
pub fn write_output(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if !crate::ranks::is_writer() {
        return Ok(());
    }
    if out.as_os_str() == "-" {
        if crate::stdout::closed_at_start() {
            bail!("--out -: standard output is closed; redirect it (`> predictions.csv`) or give --out a file");
        }
        return crate::stdout::write(bytes);
    }
    let target = match std::fs::canonicalize(out) {
        Ok(resolved) => resolved, // through symlinks
        Err(_) => out.to_path_buf(),
    };
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => bail!("--out {} is a folder: give a file path", out.display()),
        Ok(m) if !m.is_file() => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .with_context(|| format!("opening {}", out.display()))?;
            f.write_all(bytes).with_context(|| format!("writing {}", out.display()))
        }
        _ => omniglot_data::write_atomic(&target, bytes).with_context(|| format!("writing {}", out.display())),
    }
}
