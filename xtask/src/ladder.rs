//! The HW15 ladder the experiments train: budgets, rungs (config, course figures) and the
//! meta-train pool sizes of the learning-curve panel.

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Budget {
    Quick,
    Course,
    Full,
}

impl Budget {
    pub fn name(self) -> &'static str {
        match self {
            Budget::Quick => "quick",
            Budget::Course => "course",
            Budget::Full => "full",
        }
    }
}

/// One rung of the ladder.
pub struct Rung {
    pub key: &'static str,
    pub label: &'static str,
    pub config: &'static str,
    /// The course's public / private leaderboard figures.
    pub course: Option<(f64, f64)>,
    /// Steps at the course's budget (its epochs x 4 meta-steps).
    pub course_steps: usize,
    /// Part of the learning-curve and inner-step figures.
    pub in_figures: bool,
}

pub const RUNGS: [Rung; 5] = [
    Rung {
        key: "simple",
        label: "Transfer, course baseline",
        config: "configs/hw15-simple.toml",
        course: Some((0.617, 0.629)),
        course_steps: 120,
        in_figures: false,
    },
    Rung {
        key: "transfer-full",
        label: "Transfer, 771-way pre-training",
        config: "configs/transfer-full.toml",
        course: None,
        course_steps: 200,
        in_figures: false,
    },
    Rung {
        key: "fomaml",
        label: "First-order MAML",
        config: "configs/hw15-medium.toml",
        course: Some((0.828, 0.821)),
        course_steps: 480,
        in_figures: true,
    },
    Rung {
        key: "maml",
        label: "MAML",
        config: "configs/hw15-strong.toml",
        course: Some((0.900, 0.909)),
        course_steps: 200,
        in_figures: true,
    },
    Rung {
        key: "maml-rotation",
        label: "MAML + task rotation",
        config: "configs/hw15-boss.toml",
        course: Some((0.941, 0.946)),
        course_steps: 200,
        in_figures: true,
    },
];

/// Meta-train pool sizes of the second panel (MAML at the course budget; the full pool is the
/// `maml` rung of the course budget).
pub const POOLS: [usize; 2] = [50, 200];
