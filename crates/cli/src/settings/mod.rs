//! A run's settings, resolved once from its [`Config`] into the types the code uses: where the
//! data are ([`Data`]), the episodes ([`Episodes`]), the net ([`NetShape`]), the learner
//! ([`LearnerSettings`]: `fewshot-meta`'s own settings, complete), how a model adapts at
//! validation and evaluation ([`Evaluation`]) and the loop's counts ([`Schedule`]).
//!
//! [`Settings::resolve`] is where every value is checked: each is mapped into its domain type
//! here (and a domain type checks itself, its error named by the config key), so nothing
//! downstream re-reads the config or checks a value again. Commands take the parts they use.

use std::path::PathBuf;

use anyhow::{Context, bail};
use fewshot_meta::{
    Adaptation, Annealing, Engine, HeadInit, InnerLoop, LrSchedule, MamlSettings, MetaParams, Order, Outer,
};
use fewshot_model::{ConvNetConfig, ParamMap};
use fewshot_tasks::{EpisodeSpec, Protocol, TaskAugment};

use crate::config::{Config, EngineKind, ExpectCounts, LrScheduleKind, Method, TaskRotationKind};
use crate::omniglot::Omniglot;

#[cfg(test)]
mod tests;

/// The longest run name: one folder name on every common file system (255 bytes) with room
/// for `.old-N` when a run is moved aside.
const MAX_NAME: usize = 200;

/// A config resolved: every part in the type its user takes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config these come from (written beside every run and inside every checkpoint; a
    /// resumed run must have the same).
    pub config: Config,
    /// The one seed: class split, episodes, augmentation and initialisation derive from it.
    pub seed: u64,
    /// Where the data are and how they are read.
    pub data: Data,
    /// The episodes of training, validation and test.
    pub episodes: Episodes,
    /// The net's shape (its number of outputs is chosen by the user: see [`NetShape::net`]).
    pub net: NetShape,
    /// The training method.
    pub method: Method,
    /// The learner training builds.
    pub learner: LearnerSettings,
    /// How a trained model adapts to a task at validation and evaluation.
    pub evaluation: Evaluation,
    /// The training loop's counts.
    pub schedule: Schedule,
}

/// `[data]`, resolved: the directory and source with the environment's say.
#[derive(Debug, Clone)]
pub struct Data {
    /// Where archives and caches live.
    pub dir: PathBuf,
    /// Where missing archives come from.
    pub source: omniglot_data::Source,
    /// Side of the square images.
    pub image_size: u32,
    /// Which dataset counts to insist on.
    pub expected: omniglot_data::Expected,
    /// A folder of the user's images instead of Omniglot.
    pub folder: Option<FolderSource>,
    /// How stored values become inputs.
    pub intensity: fewshot_tasks::Intensity,
    /// Channels per image.
    pub channels: usize,
    /// Changes to training images (`[augment]`'s photo keys).
    pub augment: fewshot_tasks::ImageAugment,
    /// Per-channel normalisation (`data.normalize`).
    pub normalize: Normalization,
}

/// `data.normalize`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalization {
    /// Inputs as `data.intensity` gives them.
    Off,
    /// To be measured on the training classes when training starts (then written into the
    /// config as `data.mean` and `data.std`).
    Measure,
    /// These numbers.
    Given(fewshot_tasks::Normalize),
}

impl Normalization {
    /// The numbers to apply now: those given (none while they are still to be measured).
    pub fn given(&self) -> Option<&fewshot_tasks::Normalize> {
        match self {
            Normalization::Given(n) => Some(n),
            Normalization::Off | Normalization::Measure => None,
        }
    }
}

/// `[data] folder` and what goes with it, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSource {
    /// The folder of class folders.
    pub path: PathBuf,
    /// Where its decoded images are cached.
    pub cache_dir: PathBuf,
    /// The class fractions of a folder without split folders.
    pub fractions: crate::data::Fractions,
    /// Leave out classes with fewer than `need` images instead of refusing them.
    pub skip_small_classes: bool,
    /// Images an episode takes from a class (the most of training and evaluation episodes).
    pub need: usize,
}

impl Data {
    /// Load the data: both Omniglot subsets (fetching missing archives from the source), or
    /// the folder (decoding it when its cache is not current, with a progress bar on a
    /// terminal).
    pub fn load(&self) -> anyhow::Result<crate::data::Data> {
        let Some(folder) = &self.folder else {
            let omniglot = Omniglot::load(&self.dir, Some(&self.source), self.image_size, self.expected)?;
            return Ok(crate::data::Data::Omniglot(omniglot));
        };
        let options = fewshot_images::FolderOptions {
            image_size: self.image_size,
            channels: fewshot_images::Channels::from_count(self.channels)?,
            cache_dir: folder.cache_dir.clone(),
        };
        let bar = if crate::train::stderr_is_terminal() && crate::ranks::is_writer() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("decoding {pos} images [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let images = fewshot_images::ImageFolder::load(&folder.path, &options, &|n| bar.set_position(n as u64))
            .map_err(|e| anyhow::anyhow!("data.folder: {e}"))?;
        bar.finish_and_clear();
        if !images.skipped().is_empty() {
            let shown: Vec<String> = images.skipped().iter().take(3).map(|p| p.display().to_string()).collect();
            let more = images.skipped().len().saturating_sub(3);
            eprintln!(
                "{}: left out {} file(s) that are not images ({}): {}{}",
                folder.path.display(),
                images.skipped().len(),
                fewshot_images::IMAGE_EXTENSIONS.join(", "),
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            );
        }
        let kept = crate::data::usable_classes(&images, folder.need, folder.skip_small_classes)?;
        let pipeline = fewshot_tasks::Pipeline { augment: self.augment, normalize: self.normalize.given().cloned() };
        let folder =
            crate::data::Folder { images, intensity: self.intensity, kept, fractions: folder.fractions, pipeline };
        Ok(crate::data::Data::Folder(folder))
    }

    /// Whether these are the real Omniglot counts (the shipped episode files index them).
    pub fn is_omniglot(&self) -> bool {
        self.folder.is_none() && self.expected == omniglot_data::Expected::Omniglot
    }
}

/// `[episodes]` and `[augment]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Episodes {
    /// Which classes train, validate and test.
    pub protocol: Protocol,
    /// The shape of meta-training tasks.
    pub train: EpisodeSpec,
    /// The shape of validation and test episodes.
    pub eval: EpisodeSpec,
    /// Meta-train on only the first this many classes of the pool.
    pub train_classes: Option<usize>,
    /// Rotate each sampled training class by a random multiple of 90 degrees.
    pub rotate_classes: bool,
    /// Rotation of whole training tasks.
    pub task_augment: TaskAugment,
    /// Give training episodes a seed for the photo augmentation ([`Data::augment`]).
    pub augment_images: bool,
}

/// `[model]` with the image size: the net but for its number of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetShape {
    /// Side of the square input images.
    pub image_size: usize,
    /// Channels per conv block.
    pub hidden: usize,
    /// Conv blocks.
    pub depth: usize,
    /// Input channels.
    pub channels: usize,
}

impl NetShape {
    /// The net with `n_way` outputs.
    pub fn net(&self, n_way: usize) -> ConvNetConfig {
        ConvNetConfig {
            in_channels: self.channels,
            image_size: self.image_size,
            hidden: self.hidden,
            depth: self.depth,
            n_way,
        }
    }
}

/// The learner a run trains, with what its initial parameters hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearnerSettings {
    /// MAML or first-order MAML.
    Maml {
        /// The learner, complete.
        maml: MamlSettings,
        /// MAML++'s meta-parameters beside the net's.
        extras: Extras,
    },
    /// The baselines' supervised training.
    Supervised {
        /// Adam's rate and schedule.
        outer: Outer,
        /// What computes gradients.
        engine: Engine,
    },
}

/// MAML++'s meta-parameters a MAML run creates at initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extras {
    /// Learned per-layer, per-step inner rates.
    pub learned_inner_lr: bool,
    /// Per-step batch-norm gains and shifts.
    pub per_step_bn: bool,
}

/// How a trained model adapts to a task before it labels the query set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// What computes the adaptation.
    pub engine: Engine,
    /// The head a task starts from.
    pub head: EvalHead,
    /// Step size, steps (`train.eval_inner_steps`; a command may choose others with
    /// [`Evaluation::adaptation`]) and which parameters move.
    pub adaptation: Adaptation,
}

/// The head a task starts from at evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalHead {
    /// As the meta-learner starts it in training.
    Task(HeadInit),
    /// A fresh zero head of the task's classes in place of the trained one (the transfer
    /// baseline, whose head classified the whole training pool).
    Fresh,
}

impl Evaluation {
    /// The adaptation with `steps` inner steps.
    pub fn adaptation(&self, steps: usize) -> Adaptation {
        Adaptation { steps, ..self.adaptation }
    }

    /// Whether the model labels tasks of any number of classes (otherwise only as many as its
    /// head has rows).
    pub fn any_way(&self) -> bool {
        self.head != EvalHead::Task(HeadInit::Learned)
    }

    /// The parameters a task of `n_way` classes starts from, from a checkpoint's flat map,
    /// checked. For the transfer baseline, the trained feature extractor with a zero `n_way`
    /// head (a random head's logits are noise that the first fine-tuning steps must undo; from
    /// zero, one head-only step already gives a nearest-prototype classifier, and the result
    /// does not depend on a head seed).
    pub fn params(&self, net: &NetShape, flat: &ParamMap, n_way: usize) -> anyhow::Result<MetaParams> {
        self.task_params(net, MetaParams::split(flat), n_way)
    }

    /// [`Evaluation::params`] from a learner's parameters.
    pub fn task_params(&self, net: &NetShape, mut params: MetaParams, n_way: usize) -> anyhow::Result<MetaParams> {
        params.net = match self.head {
            EvalHead::Task(head) => head.task_params(&params.net, n_way)?,
            EvalHead::Fresh => {
                use candle_core::{DType, Device, Tensor};
                let features = net.net(n_way).features();
                let mut out = params.net.clone();
                out.insert("head.weight".into(), Tensor::zeros((n_way, features), DType::F32, &Device::Cpu)?);
                out.insert("head.bias".into(), Tensor::zeros(n_way, DType::F32, &Device::Cpu)?);
                out
            }
        };
        params.check(&net.net(n_way))?;
        Ok(params)
    }
}

/// The training loop's counts (`[train]`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Steps to train.
    pub steps: usize,
    /// Tasks per step.
    pub meta_batch_size: usize,
    /// A metrics line every this many steps.
    pub log_every: usize,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Also validate at about this many log-spaced steps.
    pub val_log_points: usize,
    /// Episodes of the fixed validation set.
    pub val_episodes: usize,
    /// The `last` checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Checkpoints of the best validations kept.
    pub keep_best: usize,
}

/// A domain type's complaint about a setting, named by its config key in `section`.
fn named(section: &str, e: fewshot_meta::Error) -> anyhow::Error {
    match e {
        fewshot_meta::Error::InvalidSetting { name, value, expected } => {
            anyhow::anyhow!("{section}.{name} = {value}: must be {expected}")
        }
        other => other.into(),
    }
}

impl Settings {
    /// Read a config file with `key=value` overrides (see [`Config::load`]) and resolve it.
    pub fn load(path: &std::path::Path, overrides: &[String]) -> anyhow::Result<Settings> {
        let origin = path.display().to_string();
        Settings::resolve(Config::load(path, overrides)?).with_context(|| format!("{origin}: invalid configuration"))
    }

    /// Parse config text (`origin` names it in errors) with overrides and resolve it.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> anyhow::Result<Settings> {
        Settings::resolve(Config::parse(text, origin, overrides)?)
            .with_context(|| format!("{origin}: invalid configuration"))
    }

    /// Check every value and map it into the type that uses it; errors name the key and the
    /// allowed range.
    pub fn resolve(config: Config) -> anyhow::Result<Settings> {
        check_name(&config.name)?;
        let t = &config.train;
        let outer = Outer {
            meta_lr: t.meta_lr,
            schedule: match t.meta_lr_schedule {
                LrScheduleKind::Constant => LrSchedule::Constant,
                LrScheduleKind::Cosine => {
                    LrSchedule::Cosine { total_steps: t.meta_lr_cosine_steps as u64, min_lr: t.meta_lr_min }
                }
            },
        };
        outer.validate().map_err(|e| named("train", e))?;
        // Read by the cosine schedule only, but refused out of range under any (a typo).
        if !(t.meta_lr_min >= 0.0 && t.meta_lr_min <= t.meta_lr) {
            bail!("train.meta_lr_min = {}: must be in [0, train.meta_lr = {}]", t.meta_lr_min, t.meta_lr);
        }
        let inner_loop_only = t.multi_step_loss || t.first_order_steps > 0 || t.learned_inner_lr || t.per_step_bn;
        let maml_only = inner_loop_only || t.head_init != HeadInit::Learned;
        // The transfer baseline may label test tasks by nearest centroid: its evaluation head
        // starts as the prototype head of the support features (Chen et al.'s and Tian et al.'s
        // nearest-centroid baseline with 0 `eval_inner_steps`; fine-tuned from there with more).
        let transfer_prototypes =
            t.method == Method::Transfer && t.head_init == HeadInit::Prototypes && !inner_loop_only;
        if matches!(t.method, Method::Transfer | Method::TaskClassifier) && maml_only && !transfer_prototypes {
            bail!(
                "train.multi_step_loss, train.first_order_steps, train.learned_inner_lr, train.per_step_bn and \
                 train.head_init shape MAML's inner loop; method {:?} has none (use maml or fomaml, or leave them \
                 at their defaults; transfer takes train.head_init = \"prototypes\" alone: a nearest-centroid test \
                 head)",
                t.method
            );
        }
        // The head a task starts from: a protonet's is the prototype head.
        let head_init = if t.method == Method::Protonet { HeadInit::Prototypes } else { t.head_init };
        if t.method == Method::Protonet {
            if inner_loop_only || !matches!(t.head_init, HeadInit::Learned | HeadInit::Prototypes) {
                bail!(
                    "train.method = \"protonet\" has no inner loop and its own head: leave train.multi_step_loss, \
                     train.first_order_steps, train.learned_inner_lr, train.per_step_bn and train.head_init at their \
                     defaults (or use maml with train.head_init = \"prototypes\": Proto-MAML)"
                );
            }
            if t.inner_steps != 0 {
                bail!(
                    "train.inner_steps = {}: a protonet takes no inner step in training; set train.inner_steps = 0 \
                     (and train.eval_inner_steps = 0 to evaluate it as one; more steps fine-tune its prototype head)",
                    t.inner_steps
                );
            }
        }
        if head_init == HeadInit::Prototypes && t.per_step_bn {
            bail!(
                "train.head_init = \"prototypes\" with train.per_step_bn = true: the two are not combined (the \
                 prototypes are read before the first step's batch-norm set); drop one"
            );
        }
        let engine = match t.engine {
            EngineKind::Native => Engine::Native,
            EngineKind::Candle => Engine::Candle { task_chunk: t.task_chunk },
        };
        let prototypes = head_init == HeadInit::Prototypes;
        let adaptation = Adaptation { inner_lr: t.inner_lr, steps: t.eval_inner_steps, scope: t.finetune, prototypes };
        adaptation.validate().map_err(|e| named("train", e))?;
        let episodes = episodes(&config)?;
        for (key, v) in [
            ("train.steps", t.steps),
            ("train.meta_batch_size", t.meta_batch_size),
            ("train.log_every", t.log_every),
            ("train.val_every", t.val_every),
            ("train.val_episodes", t.val_episodes),
            ("train.checkpoint_every", t.checkpoint_every),
            ("train.task_chunk", t.task_chunk),
            ("model.hidden", config.model.hidden),
            ("model.depth", config.model.depth),
        ] {
            if v == 0 {
                bail!("{key} = 0: must be at least 1");
            }
        }
        if let Some(n) = config.episodes.train_classes
            && n < episodes.train.n_way
        {
            bail!(
                "episodes.train_classes = {n}: must be at least the {} classes of a training task",
                episodes.train.n_way
            );
        }
        let d = &config.data;
        let channels = config.model.channels;
        match &d.folder {
            None => {
                if !(1..=105).contains(&d.image_size) {
                    bail!("data.image_size = {}: must be in 1..=105 (Omniglot's drawings are 105x105)", d.image_size);
                }
                if channels != 1 {
                    bail!(
                        "model.channels = {channels}: Omniglot is gray (1 channel); colour needs your own images \
                         (data.folder)"
                    );
                }
                if d.normalize || !photo_augment(&config.augment).is_off() {
                    bail!(
                        "data.normalize, augment.crop_padding, augment.flip and augment.color_jitter are for your own \
                         images (data.folder); Omniglot's augmentation is augment.class_rotation and \
                         augment.task_rotation"
                    );
                }
            }
            Some(_) => {
                if !(1..=1024).contains(&d.image_size) {
                    bail!("data.image_size = {}: must be in 1..=1024", d.image_size);
                }
                if channels != 1 && channels != 3 {
                    bail!("model.channels = {channels}: must be 1 (gray) or 3 (colour)");
                }
                let f = d.split;
                if [f.train, f.val, f.test].iter().any(|v| !(*v > 0.0 && *v < 1.0))
                    || (f.train + f.val + f.test - 1.0).abs() > 1e-6
                {
                    bail!(
                        "data.split = {{ train = {}, val = {}, test = {} }}: each must be between 0 and 1 and they \
                         must add up to 1",
                        f.train,
                        f.val,
                        f.test
                    );
                }
            }
        }
        let net = NetShape {
            image_size: d.image_size as usize,
            hidden: config.model.hidden,
            depth: config.model.depth,
            channels,
        };
        net.net(episodes.eval.n_way).validate().map_err(|err| anyhow::anyhow!("model: {err}"))?;
        let learner = match t.method {
            Method::Maml | Method::Fomaml | Method::Protonet => {
                let order = if t.method == Method::Fomaml { Order::First } else { Order::Second };
                let maml = MamlSettings {
                    inner: InnerLoop::new(t.inner_lr, t.inner_steps, order),
                    outer,
                    annealing: Annealing {
                        first_order_steps: t.first_order_steps as u64,
                        multi_step_steps: t.multi_step_loss.then_some(t.multi_step_loss_steps as u64),
                    },
                    head_init,
                    engine,
                };
                maml.validate().map_err(|e| named("train", e))?;
                LearnerSettings::Maml {
                    maml,
                    extras: Extras { learned_inner_lr: t.learned_inner_lr, per_step_bn: t.per_step_bn },
                }
            }
            Method::Transfer | Method::TaskClassifier => LearnerSettings::Supervised { outer, engine },
        };
        let head = if t.method == Method::Transfer { EvalHead::Fresh } else { EvalHead::Task(head_init) };
        let schedule = Schedule {
            steps: t.steps,
            meta_batch_size: t.meta_batch_size,
            log_every: t.log_every,
            val_every: t.val_every,
            val_log_points: t.val_log_points,
            val_episodes: t.val_episodes,
            checkpoint_every: t.checkpoint_every,
            keep_best: t.keep_best,
        };
        let data = Data {
            dir: data_dir(d.dir.clone()),
            source: data_source(d.source.clone()),
            image_size: d.image_size,
            expected: match d.expect {
                ExpectCounts::Omniglot => omniglot_data::Expected::Omniglot,
                ExpectCounts::Any => omniglot_data::Expected::Any,
            },
            folder: d.folder.as_ref().map(|path| FolderSource {
                path: path.clone(),
                cache_dir: d.dir.clone().unwrap_or_else(|| PathBuf::from("data/folders")),
                fractions: crate::data::Fractions { train: d.split.train, val: d.split.val, test: d.split.test },
                skip_small_classes: d.skip_small_classes,
                need: episodes.train.k_shot + episodes.train.n_query.max(episodes.eval.n_query),
            }),
            intensity: d.intensity.unwrap_or(if d.folder.is_some() {
                fewshot_tasks::Intensity::Plain
            } else {
                fewshot_tasks::Intensity::Ink
            }),
            channels,
            augment: photo_augment(&config.augment),
            normalize: normalization(d, channels)?,
        };
        data.augment
            .validate(d.image_size as usize)
            .map_err(|e| anyhow::anyhow!("augment.crop_padding / augment.color_jitter: {e}"))?;
        Ok(Settings {
            seed: config.seed,
            data,
            episodes,
            net,
            method: t.method,
            learner,
            evaluation: Evaluation { engine, head, adaptation },
            schedule,
            config,
        })
    }

    /// These settings for validation and test episodes of `n_way` classes (a model with an
    /// any-way head, evaluated on other tasks than it was trained on) and `n_query` queries
    /// per class, each where given.
    pub fn with_eval_shape(
        &self,
        n_way: Option<usize>,
        k_shot: Option<usize>,
        n_query: Option<usize>,
    ) -> anyhow::Result<Settings> {
        let mut config = self.config.clone();
        if let Some(n) = n_way {
            config.episodes.n_way = n;
        }
        if let Some(k) = k_shot {
            config.episodes.k_shot = k;
        }
        if let Some(n) = n_query {
            config.episodes.n_query = n;
        }
        Settings::resolve(config)
    }
}

/// A run name is one folder name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || name.starts_with('.') || !name.chars().all(name_ok) || name.len() > MAX_NAME {
        // A long value is shown by its start and length, not printed whole.
        let chars = name.chars().count();
        let shown = if chars > 60 {
            format!("{:?}... ({chars} characters)", name.chars().take(40).collect::<String>())
        } else {
            format!("{name:?}")
        };
        bail!(
            "name = {shown}: a run name is one folder name under runs/ (letters, digits, `.`, `_`, `-`; \
             not starting with `.`; at most {MAX_NAME} characters); use --out to write elsewhere"
        );
    }
    Ok(())
}

/// `[episodes]` and `[augment]`: the shapes of training and evaluation episodes.
fn episodes(config: &Config) -> anyhow::Result<Episodes> {
    let e = &config.episodes;
    let t = &config.train;
    if e.n_way < 2 {
        bail!("episodes.n_way = {}: must be at least 2", e.n_way);
    }
    if e.k_shot == 0 || e.n_query == 0 {
        bail!("episodes.k_shot = {} and episodes.n_query = {}: both must be at least 1", e.k_shot, e.n_query);
    }
    if let Some(w) = e.train_n_way.filter(|&w| w != e.n_way) {
        if w < 2 {
            bail!("episodes.train_n_way = {w}: must be at least 2");
        }
        let any_way = (matches!(t.method, Method::Maml | Method::Fomaml) && t.head_init != HeadInit::Learned)
            || t.method == Method::Protonet;
        if !any_way {
            bail!(
                "episodes.train_n_way = {w} differs from episodes.n_way = {}: only a model whose head adapts to any \
                 number of classes can train on other tasks than it is tested on (set train.head_init = \"zero\", \
                 \"shared\" or \"prototypes\", use train.method = \"protonet\", or remove train_n_way)",
                e.n_way
            );
        }
    }
    if e.train_n_query == Some(0) {
        bail!("episodes.train_n_query = 0: must be at least 1 (or absent, to train with episodes.n_query)");
    }
    // A folder's classes have their own sizes, checked when it is read.
    let omniglot = config.data.folder.is_none();
    if let Some(q) = e.train_n_query.filter(|q| omniglot && e.k_shot + q > fewshot_tasks::DRAWINGS) {
        bail!(
            "episodes.k_shot + episodes.train_n_query = {}: must be at most {} (drawings per character)",
            e.k_shot + q,
            fewshot_tasks::DRAWINGS
        );
    }
    if omniglot && e.k_shot + e.n_query > fewshot_tasks::DRAWINGS {
        bail!(
            "episodes.k_shot + episodes.n_query = {}: must be at most {} (drawings per character)",
            e.k_shot + e.n_query,
            fewshot_tasks::DRAWINGS
        );
    }
    let a = &config.augment;
    if !(0.0..=1.0).contains(&a.task_rotation_p) {
        bail!("augment.task_rotation_p = {}: must be in [0, 1]", a.task_rotation_p);
    }
    let eval = EpisodeSpec { n_way: e.n_way, k_shot: e.k_shot, n_query: e.n_query, drawing_split: e.drawing_split };
    let train =
        EpisodeSpec { n_way: e.train_n_way.unwrap_or(e.n_way), n_query: e.train_n_query.unwrap_or(e.n_query), ..eval };
    Ok(Episodes {
        protocol: e.protocol,
        train,
        eval,
        train_classes: e.train_classes,
        rotate_classes: a.class_rotation,
        task_augment: match a.task_rotation {
            TaskRotationKind::None => TaskAugment::None,
            TaskRotationKind::Quarter => TaskAugment::QuarterTurn { p: a.task_rotation_p },
            TaskRotationKind::Angle => TaskAugment::Angle { p: a.task_rotation_p },
        },
        augment_images: !photo_augment(a).is_off(),
    })
}

/// `[augment]`'s photo keys.
fn photo_augment(a: &crate::config::AugmentConfig) -> fewshot_tasks::ImageAugment {
    fewshot_tasks::ImageAugment { crop_padding: a.crop_padding, flip: a.flip, jitter: a.color_jitter }
}

/// `data.normalize`, `data.mean` and `data.std`, checked against `channels`.
fn normalization(d: &crate::config::DataConfig, channels: usize) -> anyhow::Result<Normalization> {
    match (&d.mean, &d.std) {
        (None, None) => Ok(if d.normalize { Normalization::Measure } else { Normalization::Off }),
        (Some(mean), Some(std)) => {
            if !d.normalize {
                bail!("data.mean and data.std are set but data.normalize = false: set it to true, or remove them");
            }
            let n = fewshot_tasks::Normalize { mean: mean.clone(), std: std.clone() };
            n.validate(channels).map_err(|e| anyhow::anyhow!("data.mean / data.std: {e}"))?;
            Ok(Normalization::Given(n))
        }
        _ => bail!(
            "data.mean and data.std go together: give both (one value per channel), or neither to have them \
             measured on the training classes"
        ),
    }
}

/// The data directory: the config's `dir`, else `OMNIGLOT_DATA_DIR`, else `data/omniglot` (an
/// empty `OMNIGLOT_DATA_DIR` counts as unset, as an empty `OMNIGLOT_SOURCE` does: it would put
/// the archives in the current directory).
fn data_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.or_else(|| std::env::var_os("OMNIGLOT_DATA_DIR").filter(|d| !d.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data/omniglot"))
}

/// The archive source: the config's `source`, else `OMNIGLOT_SOURCE`, else the canonical URL.
fn data_source(source: Option<String>) -> omniglot_data::Source {
    let s = source.or_else(|| std::env::var("OMNIGLOT_SOURCE").ok().filter(|s| !s.is_empty()));
    s.map(|s| omniglot_data::Source::parse(&s)).unwrap_or_default()
}
