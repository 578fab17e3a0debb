//! Run configuration: TOML files under `configs/`, `--set key=value` overrides, validation
//! into a typed config that cannot hold nonsense.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A whole run's settings, as written in a config file (every section optional but `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name; outputs go to `runs/<name>` unless `--out` says otherwise.
    pub name: String,
    /// The one seed: class split, episodes, augmentation and initialisation derive from it.
    #[serde(default)]
    pub seed: u64,
    /// Dataset location and image size.
    #[serde(default)]
    pub data: DataConfig,
    /// Episode shape and class pools.
    #[serde(default)]
    pub episodes: EpisodesConfig,
    /// Net shape.
    #[serde(default)]
    pub model: ModelConfig,
    /// Training method and schedule.
    #[serde(default)]
    pub train: TrainConfig,
    /// Task augmentation.
    #[serde(default)]
    pub augment: AugmentConfig,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where archives and caches live (default `data/omniglot`, or `OMNIGLOT_DATA_DIR`).
    pub dir: Option<PathBuf>,
    /// Where to fetch missing archives from (default: `OMNIGLOT_SOURCE`, else the canonical URL).
    pub source: Option<String>,
    /// Side of the square images.
    pub image_size: u32,
    /// `omniglot` (the real counts are checked) or `any` (for small generated data sets).
    pub expect: ExpectCounts,
}

/// Which dataset counts to insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectCounts {
    /// 964 + 659 characters.
    Omniglot,
    /// Any complete structure.
    Any,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { dir: None, source: None, image_size: 28, expect: ExpectCounts::Omniglot }
    }
}

impl DataConfig {
    /// The data directory: this config's `dir`, else `OMNIGLOT_DATA_DIR`, else `data/omniglot`
    /// (an empty `OMNIGLOT_DATA_DIR` counts as unset, as an empty `OMNIGLOT_SOURCE` does: it
    /// would put the archives in the current directory).
    pub fn resolved_dir(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| std::env::var_os("OMNIGLOT_DATA_DIR").filter(|d| !d.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("data/omniglot"))
    }

    /// The archive source: this config's `source`, else `OMNIGLOT_SOURCE`, else the canonical URL.
    pub fn resolved_source(&self) -> omniglot_data::Source {
        let s = self.source.clone().or_else(|| std::env::var("OMNIGLOT_SOURCE").ok().filter(|s| !s.is_empty()));
        s.map(|s| omniglot_data::Source::parse(&s)).unwrap_or_default()
    }

    /// Load both subsets (fetching missing archives from the source).
    pub fn load(&self) -> anyhow::Result<crate::omniglot::Omniglot> {
        let expected = match self.expect {
            ExpectCounts::Omniglot => omniglot_data::Expected::Omniglot,
            ExpectCounts::Any => omniglot_data::Expected::Any,
        };
        crate::omniglot::Omniglot::load(&self.resolved_dir(), Some(&self.resolved_source()), self.image_size, expected)
    }
}

/// `[episodes]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodesConfig {
    /// `course` or `paper`.
    pub protocol: fewshot_tasks::Protocol,
    /// Classes per episode (of validation and test episodes, and of meta-training tasks
    /// unless `train_n_way` is set).
    pub n_way: usize,
    /// Classes per meta-training task only (default: `n_way`): a model whose head adapts to any
    /// number of classes (`train.head_init = "zero"` or `"shared"`) can train on small tasks
    /// and be validated and tested on `n_way`-way ones.
    pub train_n_way: Option<usize>,
    /// Support images per class.
    pub k_shot: usize,
    /// Query images per class in validation and test episodes (and in meta-training unless
    /// `train_n_query` is set).
    pub n_query: usize,
    /// Query images per class in meta-training tasks only (default: `n_query`). A training
    /// recipe choice: the evaluation protocol keeps `n_query`.
    pub train_n_query: Option<usize>,
    /// `any` or `first_ten_support`.
    pub drawing_split: fewshot_tasks::DrawingSplit,
    /// Meta-train on only the first this many classes of the (seeded, shuffled) meta-train
    /// pool; all of them when absent (the course code's `task_num`).
    pub train_classes: Option<usize>,
}

impl Default for EpisodesConfig {
    fn default() -> Self {
        EpisodesConfig {
            protocol: fewshot_tasks::Protocol::Course,
            n_way: 5,
            train_n_way: None,
            k_shot: 1,
            n_query: 1,
            train_n_query: None,
            drawing_split: fewshot_tasks::DrawingSplit::Any,
            train_classes: None,
        }
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Channels per conv block.
    pub hidden: usize,
    /// Number of conv blocks.
    pub depth: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { hidden: 64, depth: 4 }
    }
}

/// Training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// MAML, exact second order.
    Maml,
    /// First-order MAML.
    Fomaml,
    /// Transfer-learning baseline ("A Closer Look at Few-shot Classification"): one classifier
    /// over all meta-train classes; at evaluation a fresh, zero N-way head replaces its head and
    /// is fine-tuned on each task's support set (see `train.finetune`).
    Transfer,
    /// The course's baseline: one N-way classifier trained on the support sets of meta-train
    /// tasks (labels local to each task, no inner loop), then fine-tuned as a whole on each
    /// test task's support set.
    TaskClassifier,
}

/// Which parameters fine-tuning on a support set updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// Every parameter (MAML's inner loop).
    All,
    /// The linear head only, the feature extractor frozen.
    Head,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `maml`, `fomaml`, `transfer` or `task_classifier`.
    pub method: Method,
    /// Meta-steps (or, for `transfer`, classifier steps).
    pub steps: usize,
    /// Tasks per meta-step (for `transfer`: images per step = meta_batch_size x n_way x (k_shot + n_query)).
    pub meta_batch_size: usize,
    /// Outer (Adam) learning rate.
    pub meta_lr: f64,
    /// Inner SGD step size (also used to fine-tune at evaluation).
    pub inner_lr: f64,
    /// Inner steps during training.
    pub inner_steps: usize,
    /// Inner steps at validation and evaluation.
    pub eval_inner_steps: usize,
    /// What adaptation at validation and evaluation updates: `all` or `head`.
    pub finetune: Finetune,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Also validate at about this many log-spaced steps (1, 2, 3, 5, ...; for learning
    /// curves on a log axis); 0: none.
    pub val_log_points: usize,
    /// Episodes in the fixed validation set.
    pub val_episodes: usize,
    /// Write the `last` checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Also keep the checkpoints of the this-many best validations under
    /// `checkpoints/top/` (`step-<N>.safetensors`), for an ensemble at test time as MAML++
    /// evaluates (`fewshot eval --checkpoint <run>/checkpoints/top`); 0: only `best`. An
    /// output option: changing it on `--resume` is allowed.
    pub keep_best: usize,
    /// MAML++ multi-step loss: the query loss after every inner step enters the meta-objective,
    /// its weights annealed from uniform toward the last step over
    /// `multi_step_loss_steps` meta-steps (MAML and first-order MAML only).
    pub multi_step_loss: bool,
    /// Meta-steps over which the multi-step loss anneals.
    pub multi_step_loss_steps: usize,
    /// MAML++ derivative-order annealing: the first this many meta-steps of `maml` are first
    /// order; 0: off.
    pub first_order_steps: usize,
    /// MAML++ learned per-layer, per-step inner learning rates (LSLR): one step size per
    /// parameter tensor and inner step, starting at `inner_lr` and meta-learned with the net
    /// (kept in checkpoints as `inner_lr.<parameter>`). Evaluation with more inner steps than
    /// `inner_steps` repeats the last learned rate.
    pub learned_inner_lr: bool,
    /// MAML++ per-step batch-norm weights and biases: a gain and shift per inner step,
    /// meta-learned and not adapted in the inner loop (kept as `bn_step.<parameter>`,
    /// `[inner_steps, hidden]`; they replace the net's own batch-norm parameters). Native
    /// engine only.
    pub per_step_bn: bool,
    /// The outer learning rate over training: `constant` or `cosine` (annealed from `meta_lr`
    /// at step 0 to `meta_lr_min` at step `meta_lr_cosine_steps`, then constant).
    pub meta_lr_schedule: LrScheduleKind,
    /// Where the cosine schedule ends.
    pub meta_lr_min: f64,
    /// The cosine schedule's length in meta-steps (its own key, not `steps`, so that
    /// extending a run with `--resume` does not change the schedule it trained under).
    pub meta_lr_cosine_steps: usize,
    /// How the head starts each task (MAML and first-order MAML): `learned` (MAML's), `zero`
    /// (zeroed before every inner loop) or `shared` (one learned row copied to every class).
    /// With `zero` or `shared` the model is invariant to the order of labels and evaluates on
    /// any number of classes (`fewshot eval --n-way`, `predict`).
    pub head_init: HeadInitKind,
    /// What computes gradients: `native` (the hand-written engine) or `candle` (the reference
    /// path through candle's autograd; slower, for checking).
    pub engine: EngineKind,
    /// Tasks per batched computation of the `candle` engine (its memory bound for second
    /// order); the native engine runs one task at a time and does not read it.
    pub task_chunk: usize,
}

/// `train.head_init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInitKind {
    /// The meta-learned head.
    #[default]
    Learned,
    /// Zero before every inner loop.
    Zero,
    /// One learned row for every class.
    Shared,
}

/// `train.meta_lr_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduleKind {
    /// `meta_lr` throughout.
    #[default]
    Constant,
    /// Cosine annealing to `meta_lr_min`.
    Cosine,
}

/// `train.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The native engine (`fewshot_model::engine`).
    #[default]
    Native,
    /// candle's autograd.
    Candle,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: Method::Maml,
            steps: 3000,
            meta_batch_size: 32,
            meta_lr: 0.001,
            inner_lr: 0.4,
            inner_steps: 1,
            eval_inner_steps: 3,
            finetune: Finetune::All,
            log_every: 10,
            val_every: 100,
            val_log_points: 0,
            val_episodes: 200,
            checkpoint_every: 100,
            keep_best: 0,
            multi_step_loss: false,
            multi_step_loss_steps: 1000,
            first_order_steps: 0,
            learned_inner_lr: false,
            per_step_bn: false,
            meta_lr_schedule: LrScheduleKind::Constant,
            meta_lr_min: 0.0,
            meta_lr_cosine_steps: 0,
            head_init: HeadInitKind::Learned,
            engine: EngineKind::Native,
            task_chunk: fewshot_meta::DEFAULT_TASK_CHUNK,
        }
    }
}

/// Whole-task rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskRotationKind {
    /// None.
    None,
    /// 90 or 270 degrees.
    Quarter,
    /// Uniform angle in [-90, 90] degrees.
    Angle,
}

/// `[augment]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Rotate each sampled class by a random multiple of 90 degrees.
    pub class_rotation: bool,
    /// `none`, `quarter` or `angle`.
    pub task_rotation: TaskRotationKind,
    /// Probability of rotating a task.
    pub task_rotation_p: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig { class_rotation: false, task_rotation: TaskRotationKind::None, task_rotation_p: 0.0 }
    }
}

/// The longest run name: one folder name on every common file system (255 bytes) with room
/// for `.old-N` when a run is moved aside.
const MAX_NAME: usize = 200;

/// Apply one `--set key=value` to a config table.
fn apply_override(table: &mut toml::Table, o: &str) -> anyhow::Result<()> {
    let (key, value) =
        o.split_once('=').with_context(|| format!("--set {o}: expected key=value, e.g. --set train.steps=100"))?;
    // A whole number TOML cannot hold would otherwise fall through to a string and be
    // reported as "invalid type: string".
    let number = value.trim();
    let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && number.parse::<i64>().is_err() {
        bail!("--set {o}: {number} is out of range (a config number is at most {})", i64::MAX);
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().filter(|k| !k.is_empty()).with_context(|| format!("--set {o}: empty key"))?;
    let mut node = table;
    for p in parts {
        node = node
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {o}: `{p}` is not a section"))?;
    }
    merge(node, last, value);
    Ok(())
}

/// Set `key` of `table` to `value`; a table value is merged key by key into the table already
/// there (so `--set 'augment={class_rotation=true}'` changes that key alone, as
/// `--set augment.class_rotation=true` does, instead of dropping the section's other keys).
fn merge(table: &mut toml::Table, key: &str, value: toml::Value) {
    match (table.get_mut(key), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => {
            for (k, v) in new {
                merge(existing, &k, v);
            }
        }
        (_, value) => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// The error of a config that does not deserialise, blamed on its source: a type error in the
/// file itself gets toml's own message (line, and the offending `key = value`); otherwise the
/// first `--set` after which the config no longer reads is named.
fn blame(
    text: &str,
    origin: &str,
    mut table: toml::Table,
    overrides: &[String],
    merged: toml::de::Error,
) -> anyhow::Error {
    if let Err(e) = toml::from_str::<Config>(text)
        && !e.message().starts_with("missing field")
    {
        return anyhow::anyhow!("{origin}: {}", e.to_string().trim());
    }
    for o in overrides {
        if apply_override(&mut table, o).is_err() {
            break;
        }
        if let Err(e) = table.clone().try_into::<Config>()
            && !e.message().starts_with("missing field")
        {
            return anyhow::anyhow!("--set {o}: {}", e.message().trim());
        }
    }
    anyhow::anyhow!("{origin}: {}", merged.message().trim())
}

impl Config {
    /// Read a config file and apply `key=value` overrides (dotted keys, TOML values; a value
    /// that does not parse as TOML is taken as a string), then validate.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parse config text (`origin` names it in errors) with overrides, then validate.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text).with_context(|| format!("{origin} is not valid TOML"))?;
        let file_table = table.clone();
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Config = match table.try_into() {
            Ok(c) => c,
            Err(e) => return Err(blame(text, origin, file_table, overrides, e)),
        };
        config.validate().with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    /// Range checks the types cannot express; errors name the key and the allowed range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let e = &self.episodes;
        let t = &self.train;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if self.name.is_empty()
            || self.name.starts_with('.')
            || !self.name.chars().all(name_ok)
            || self.name.len() > MAX_NAME
        {
            // A long value is shown by its start and length, not printed whole.
            let chars = self.name.chars().count();
            let shown = if chars > 60 {
                format!("{:?}... ({chars} characters)", self.name.chars().take(40).collect::<String>())
            } else {
                format!("{:?}", self.name)
            };
            bail!(
                "name = {shown}: a run name is one folder name under runs/ (letters, digits, `.`, `_`, `-`; \
                 not starting with `.`; at most {MAX_NAME} characters); use --out to write elsewhere"
            );
        }
        let positive = |key: &str, v: f64| -> anyhow::Result<()> {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{key} = {v}: must be a finite number > 0");
            }
            Ok(())
        };
        positive("train.meta_lr", t.meta_lr)?;
        if matches!(t.method, Method::Transfer | Method::TaskClassifier)
            && (t.multi_step_loss
                || t.first_order_steps > 0
                || t.learned_inner_lr
                || t.per_step_bn
                || t.head_init != HeadInitKind::Learned)
        {
            bail!(
                "train.multi_step_loss, train.first_order_steps, train.learned_inner_lr, train.per_step_bn and \
                 train.head_init shape \
                 MAML's inner loop; \
                 method {:?} has none (use maml or fomaml, or leave them at their defaults)",
                t.method
            );
        }
        if t.meta_lr_schedule == LrScheduleKind::Cosine && t.meta_lr_cosine_steps == 0 {
            bail!(
                "train.meta_lr_schedule = \"cosine\" needs train.meta_lr_cosine_steps (the schedule's length \
                 in meta-steps, usually train.steps)"
            );
        }
        if !(t.meta_lr_min >= 0.0 && t.meta_lr_min <= t.meta_lr) {
            bail!("train.meta_lr_min = {}: must be in [0, train.meta_lr = {}]", t.meta_lr_min, t.meta_lr);
        }
        positive("train.inner_lr", t.inner_lr)?;
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
            let any_way = matches!(t.method, Method::Maml | Method::Fomaml) && t.head_init != HeadInitKind::Learned;
            if !any_way {
                bail!(
                    "episodes.train_n_way = {w} differs from episodes.n_way = {}: only a MAML model whose head adapts \
                     to any number of classes can train on other tasks than it is tested on (set train.head_init = \
                     \"zero\" or \"shared\", or remove train_n_way)",
                    e.n_way
                );
            }
        }
        if e.train_n_query == Some(0) {
            bail!("episodes.train_n_query = 0: must be at least 1 (or absent, to train with episodes.n_query)");
        }
        if let Some(q) = e.train_n_query.filter(|q| e.k_shot + q > fewshot_tasks::DRAWINGS) {
            bail!(
                "episodes.k_shot + episodes.train_n_query = {}: must be at most {} (drawings per character)",
                e.k_shot + q,
                fewshot_tasks::DRAWINGS
            );
        }
        if e.k_shot + e.n_query > fewshot_tasks::DRAWINGS {
            bail!(
                "episodes.k_shot + episodes.n_query = {}: must be at most {} (drawings per character)",
                e.k_shot + e.n_query,
                fewshot_tasks::DRAWINGS
            );
        }
        for (key, v) in [
            ("train.steps", t.steps),
            ("train.meta_batch_size", t.meta_batch_size),
            ("train.log_every", t.log_every),
            ("train.val_every", t.val_every),
            ("train.val_episodes", t.val_episodes),
            ("train.checkpoint_every", t.checkpoint_every),
            ("train.task_chunk", t.task_chunk),
            ("model.hidden", self.model.hidden),
            ("model.depth", self.model.depth),
        ] {
            if v == 0 {
                bail!("{key} = 0: must be at least 1");
            }
        }
        let train_way = e.train_n_way.unwrap_or(e.n_way);
        if let Some(n) = e.train_classes
            && n < train_way
        {
            bail!("episodes.train_classes = {n}: must be at least the {train_way} classes of a training task");
        }
        if !(0.0..=1.0).contains(&self.augment.task_rotation_p) {
            bail!("augment.task_rotation_p = {}: must be in [0, 1]", self.augment.task_rotation_p);
        }
        if !(1..=105).contains(&self.data.image_size) {
            bail!("data.image_size = {}: must be in 1..=105", self.data.image_size);
        }
        self.net(e.n_way).validate().map_err(|err| anyhow::anyhow!("model: {err}"))?;
        Ok(())
    }

    /// The net for `n_way` outputs.
    pub fn net(&self, n_way: usize) -> fewshot_model::ConvNetConfig {
        fewshot_model::ConvNetConfig {
            in_channels: 1,
            image_size: self.data.image_size as usize,
            hidden: self.model.hidden,
            depth: self.model.depth,
            n_way,
        }
    }

    /// The engine that computes gradients and adapted logits.
    pub fn engine(&self) -> fewshot_meta::Engine {
        match self.train.engine {
            EngineKind::Native => fewshot_meta::Engine::Native,
            EngineKind::Candle => fewshot_meta::Engine::Candle { task_chunk: self.train.task_chunk },
        }
    }

    /// MAML++'s annealed options (derivative order, multi-step loss).
    pub fn annealing(&self) -> fewshot_meta::Annealing {
        let t = &self.train;
        fewshot_meta::Annealing {
            first_order_steps: t.first_order_steps as u64,
            multi_step_steps: t.multi_step_loss.then_some(t.multi_step_loss_steps as u64),
        }
    }

    /// How the head starts each task.
    pub fn head_init(&self) -> fewshot_meta::HeadInit {
        match self.train.head_init {
            HeadInitKind::Learned => fewshot_meta::HeadInit::Learned,
            HeadInitKind::Zero => fewshot_meta::HeadInit::Zero,
            HeadInitKind::Shared => fewshot_meta::HeadInit::Shared,
        }
    }

    /// The outer learning rate's schedule.
    pub fn lr_schedule(&self) -> fewshot_meta::LrSchedule {
        match self.train.meta_lr_schedule {
            LrScheduleKind::Constant => fewshot_meta::LrSchedule::Constant,
            LrScheduleKind::Cosine => {
                let t = &self.train;
                fewshot_meta::LrSchedule::Cosine { total_steps: t.meta_lr_cosine_steps as u64, min_lr: t.meta_lr_min }
            }
        }
    }

    /// MAML's inner loop in training (`None` for the baselines, which have none).
    pub fn inner_loop(&self) -> Option<fewshot_meta::InnerLoop> {
        let order = match self.train.method {
            Method::Maml => fewshot_meta::Order::Second,
            Method::Fomaml => fewshot_meta::Order::First,
            Method::Transfer | Method::TaskClassifier => return None,
        };
        Some(fewshot_meta::InnerLoop::new(self.train.inner_lr, self.train.inner_steps, order))
    }

    /// How a model adapts to a task at validation and evaluation, with `steps` inner steps.
    pub fn adaptation(&self, steps: usize) -> fewshot_meta::Adaptation {
        let scope = match self.train.finetune {
            Finetune::All => fewshot_meta::Scope::All,
            Finetune::Head => fewshot_meta::Scope::Head,
        };
        fewshot_meta::Adaptation { inner_lr: self.train.inner_lr, steps, scope }
    }

    /// The shape of meta-training tasks: [`Config::spec`] with `episodes.train_n_way` and
    /// `episodes.train_n_query`.
    pub fn train_spec(&self) -> fewshot_tasks::EpisodeSpec {
        let mut spec = self.spec();
        spec.n_way = self.episodes.train_n_way.unwrap_or(spec.n_way);
        spec.n_query = self.episodes.train_n_query.unwrap_or(spec.n_query);
        spec
    }

    /// The episode shape of validation and test episodes.
    pub fn spec(&self) -> fewshot_tasks::EpisodeSpec {
        let e = &self.episodes;
        fewshot_tasks::EpisodeSpec {
            n_way: e.n_way,
            k_shot: e.k_shot,
            n_query: e.n_query,
            drawing_split: e.drawing_split,
        }
    }

    /// The keys whose values differ between `self` and `other`, as `key: self -> other`.
    pub fn differences(&self, other: &Config) -> Vec<String> {
        fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        flatten(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_owned(), other.to_string());
                }
            }
        }
        let table = |c: &Config| {
            let mut out = std::collections::BTreeMap::new();
            flatten("", &toml::Value::try_from(c).expect("configs serialise"), &mut out);
            out
        };
        let (a, b) = (table(self), table(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let none = "(unset)".to_owned();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} -> {}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none)))
            .collect()
    }

    /// The config as TOML (written beside every run and inside every checkpoint).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_err(text: &str, overrides: &[&str], expected: &str) {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let err = format!("{:#}", Config::parse(text, "test.toml", &overrides).unwrap_err());
        assert!(err.contains(expected), "{err}\n  does not contain: {expected}");
    }

    #[test]
    fn a_table_value_merges_into_its_section() {
        let text = "name = \"x\"\n[augment]\ntask_rotation = \"angle\"\ntask_rotation_p = 0.6\n";
        let sets = ["augment={class_rotation=true}".to_owned()];
        let merged = Config::parse(text, "test.toml", &sets).unwrap();
        let dotted = Config::parse(text, "test.toml", &["augment.class_rotation=true".to_owned()]).unwrap();
        assert_eq!(merged, dotted);
        assert!(merged.augment.class_rotation);
        assert_eq!(merged.augment.task_rotation_p, 0.6);
        // A table after dotted keys keeps them.
        let sets = ["train.steps=7".to_owned(), "train={meta_batch_size=3}".to_owned()];
        let c = Config::parse("name = \"x\"\n", "test.toml", &sets).unwrap();
        assert_eq!((c.train.steps, c.train.meta_batch_size), (7, 3));
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("name = \"x\"", "t", &["train.steps=7".into(), "episodes.n_way=20".into()]).unwrap();
        assert_eq!((c.train.steps, c.episodes.n_way, c.train.inner_lr), (7, 20, 0.4));
        let again = Config::parse(&c.to_toml(), "round trip", &[]).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_configs_name_the_key() {
        check_err("name = \"x\"\n[train]\nstepz = 3\n", &[], "unknown field `stepz`");
        check_err("name = \"x\"\n", &["train.inner_lr=0"], "train.inner_lr = 0: must be a finite number > 0");
        check_err("name = \"x\"\n", &["train.meta_lr=-1"], "train.meta_lr = -1");
        check_err(
            "name = \"x\"\n",
            &["episodes.k_shot=10", "episodes.n_query=11"],
            "episodes.k_shot + episodes.n_query = 21: must be at most 20",
        );
        check_err("name = \"x\"\n", &["train.method=\"reptile\""], "unknown variant `reptile`");
        check_err("name = \"x\"\n", &["model.depth=6"], "image_size");
        check_err("name = \"x\"\n", &["model.depth=64"], "2^depth = 18446744073709551616 for depth 64");
        check_err("name = \"x\"\n", &["train.steps=18446744073709551615"], "out of range (a config number is at most");
        let long = format!("name = \"{}\"\n", "a".repeat(10_000_000));
        let err = format!("{:#}", Config::parse(&long, "test.toml", &[]).unwrap_err());
        assert!(err.len() < 400 && err.contains("... (10000000 characters)"), "{}", &err[..err.len().min(400)]);
        check_err("name = \"x\"\n", &["model.depth=1000"], "2^depth = 2^1000 for depth 1000");
        check_err("name = \"x\"\n", &["trainsteps"], "expected key=value");
        check_err("name = \"x\"\n\n[train]\nsteps = \"many\"\n", &[], "line 4");
        check_err("name = \"x\"\n\n[train]\nsteps = \"many\"\n", &[], "steps = \"many\"");
        check_err("name = \"x\"\n", &["train.steps=many"], "--set train.steps=many: invalid type");
        // A file without a name is fine when --set gives one.
        let c = Config::parse("[train]\nsteps = 5\n", "t", &["name=\"n\"".into()]).unwrap();
        assert_eq!((c.name.as_str(), c.train.steps), ("n", 5));
        check_err("name = \"\"\n", &[], "name = \"\": a run name is one folder name");
        check_err("name = \"../../x\"\n", &[], "a run name is one folder name");
        check_err("name = \"x\"\n", &["episodes.train_classes=3"], "episodes.train_classes = 3: must be at least");
        // Training tasks of another shape: queries any time, classes only for an any-way head.
        check_err("name = \"x\"\n", &["episodes.train_n_query=0"], "episodes.train_n_query = 0");
        check_err("name = \"x\"\n", &["episodes.train_n_query=20"], "episodes.k_shot + episodes.train_n_query = 21");
        check_err("name = \"x\"\n", &["episodes.n_way=20", "episodes.train_n_way=5"], "train.head_init");
        let c = Config::parse(
            "name = \"x\"\n",
            "t",
            &[
                "episodes.n_way=20".into(),
                "episodes.train_n_way=5".into(),
                "episodes.train_n_query=3".into(),
                "train.head_init=\"shared\"".into(),
            ],
        )
        .unwrap();
        let (train, test) = (c.train_spec(), c.spec());
        assert_eq!((train.n_way, train.n_query, test.n_way, test.n_query), (5, 3, 20, 1));
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(Some(c.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "name matches file");
                n += 1;
            }
        }
        assert!(n >= 6, "{n} configs");
    }
}
