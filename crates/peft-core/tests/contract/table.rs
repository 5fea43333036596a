//! The rows of the method contract: one per method (and per variant whose code path differs),
//! as `__test__/methods.spec.ts` has them. A new method is one row here.
use peft_core::tuners::{adalora, ia3, loha, lokr, lora, vera};
use serde_json::{Map, Value};

/// What merging must do.
#[derive(Clone, Copy, Debug)]
pub enum Merge {
    /// Merged output = unmerged output, unmerge restores the base weights, merge_and_unload
    /// leaves the plain model with the adapter folded in.
    Merges,
    /// `merge` fails with an error containing this text and leaves the model as it was.
    Refuses(&'static str),
}

pub struct Case {
    pub name: &'static str,
    /// The PEFT config as in `adapter_config.json`, `peft_type` included.
    pub config: &'static str,
    /// A folder of the HF fixture (`cases/<dir>`): PEFT 0.21's files and expected values.
    pub fixture: Option<&'static str>,
    pub merge: Merge,
    /// Positions the logits carry before the tokens (virtual tokens prepended to the input).
    pub virtual_tokens: usize,
    /// Finite differences only on the parameters whose name contains this (all when None).
    pub fd_only: Option<&'static str>,
    /// Largest finite-difference error, max |fd − g| / max |g| over the checked elements.
    pub fd_tol: f64,
    /// Largest merged-vs-unmerged logit difference.
    pub merge_tol: f32,
    /// How many trainable tensors the config makes on the tiny model, where pinned.
    pub trainable: Option<usize>,
    /// PEFT 0.21's config fields, for the fixture's `adapter_config.json` written back.
    pub peft_fields: Option<fn() -> Map<String, Value>>,
}

impl Case {
    pub fn config(&self) -> Value {
        serde_json::from_str(self.config).unwrap_or_else(|e| panic!("{}: config: {e}", self.name))
    }

    pub fn peft_type(&self) -> String {
        self.config()["peft_type"].as_str().unwrap_or_else(|| panic!("{}: no peft_type", self.name)).to_string()
    }
}

const REFUSES: Merge = Merge::Refuses("cannot be merged");

/// The defaults of a row; each row names what differs.
const ROW: Case = Case {
    name: "",
    config: "",
    fixture: None,
    merge: REFUSES,
    virtual_tokens: 0,
    fd_only: None,
    fd_tol: 1e-6,
    merge_tol: 1e-5,
    trainable: None,
    peft_fields: None,
};

/// The LoRA family after PEFT, with its fixtures.
const LORA_FAMILY: &[Case] = &[
    Case {
        name: "LoRA",
        config: r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}"#,
        fixture: Some("lora_qv"),
        merge: Merge::Merges,
        peft_fields: Some(lora::config::peft_defaults),
        ..ROW
    },
    Case {
        name: "rsLoRA all-linear",
        config: r#"{"peft_type": "LORA", "r": 4, "use_rslora": true, "target_modules": "all-linear"}"#,
        fixture: Some("lora_all_rslora"),
        merge: Merge::Merges,
        peft_fields: Some(lora::config::peft_defaults),
        ..ROW
    },
    // PEFT detaches DoRA's weight norm (paper §4.3), so A and B get that gradient, not the
    // exact derivative; the magnitude vector's gradient is exact and is the one checked.
    Case {
        name: "DoRA",
        config: r#"{"peft_type": "LORA", "r": 4, "use_dora": true, "target_modules": ["q_proj", "v_proj"]}"#,
        fixture: Some("dora"),
        merge: Merge::Merges,
        fd_only: Some("lora_magnitude_vector"),
        peft_fields: Some(lora::config::peft_defaults),
        ..ROW
    },
    // Feed-forward vectors scale the input, the others the output: both kinds on every linear.
    Case {
        name: "IA3",
        config: r#"{"peft_type": "IA3", "target_modules": "all-linear", "feedforward_modules": ["down_proj", "up_proj"]}"#,
        fixture: Some("ia3"),
        merge: Merge::Merges,
        trainable: Some(14),
        peft_fields: Some(ia3::peft_defaults),
        ..ROW
    },
    Case {
        name: "VeRA",
        config: r#"{"peft_type": "VERA", "r": 8, "target_modules": "all-linear", "projection_prng_key": 5}"#,
        fixture: Some("vera"),
        merge: Merge::Merges,
        trainable: Some(28),
        peft_fields: Some(vera::peft_defaults),
        ..ROW
    },
    Case {
        name: "LoHa",
        config: r#"{"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": "all-linear", "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"q_proj": 2}}"#,
        fixture: Some("loha"),
        merge: Merge::Merges,
        trainable: Some(14 * 4),
        peft_fields: Some(loha::peft_defaults),
        ..ROW
    },
    // q_proj: full factors w1, w2 (r 8); the other six linears low-rank on both sides: 26 a layer.
    Case {
        name: "LoKr",
        config: r#"{"peft_type": "LOKR", "r": 2, "alpha": 4, "target_modules": "all-linear", "decompose_both": true, "rank_pattern": {"q_proj": 8}}"#,
        fixture: Some("lokr"),
        merge: Merge::Merges,
        trainable: Some(2 * 26),
        peft_fields: Some(lokr::peft_defaults),
        ..ROW
    },
    // No PEFT fixture: the SVD form's equations are checked in adalora.rs.
    Case {
        name: "AdaLoRA",
        config: r#"{"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "lora_alpha": 6, "total_step": 10, "target_modules": "all-linear"}"#,
        merge: Merge::Merges,
        trainable: Some(14 * 3),
        peft_fields: Some(adalora::peft_defaults),
        ..ROW
    },
];

/// Every method the core parses; `every_peft_type_has_a_row` keeps it complete.
pub fn methods() -> impl Iterator<Item = &'static Case> {
    LORA_FAMILY.iter().chain(HOOK_METHODS).chain(SURVEY_METHODS)
}

/// The methods at the prompt, norm and sublayer hook sites.
const HOOK_METHODS: &[Case] = &[
    // The fixture has 5 virtual tokens; the check reads them from its logits.
    Case {
        name: "prompt tuning",
        config: r#"{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 3}"#,
        fixture: Some("prompt_tuning"),
        virtual_tokens: 3,
        ..ROW
    },
    // The fixture's model has GQA (2 key/value heads).
    Case {
        name: "prefix tuning",
        config: r#"{"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4}"#,
        fixture: Some("prefix_tuning"),
        ..ROW
    },
    Case {
        name: "prefix tuning + projection",
        config: r#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "prefix_projection": true, "encoder_hidden_size": 24}"#,
        ..ROW
    },
    Case {
        name: "p-tuning",
        config: r#"{"peft_type": "P_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "encoder_hidden_size": 32}"#,
        virtual_tokens: 4,
        ..ROW
    },
    Case { name: "LN tuning", config: r#"{"peft_type": "LN_TUNING"}"#, fixture: Some("ln_tuning"), merge: Merge::Merges, ..ROW },
    Case {
        name: "bottleneck adapter",
        config: r#"{"peft_type": "BOTTLENECK_ADAPTER", "bottleneck_size": 8, "non_linearity": "gelu"}"#,
        ..ROW
    },
    Case {
        name: "parallel adapter",
        config: r#"{"peft_type": "PARALLEL_ADAPTER", "bottleneck_size": 8, "layers_to_transform": [1]}"#,
        ..ROW
    },
    Case {
        name: "SSF on linears",
        config: r#"{"peft_type": "SSF", "target_modules": ["q_proj", "down_proj", "lm_head"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    // After an RMSNorm (no bias to fold the shift into) SSF cannot merge.
    Case { name: "SSF with norms", config: r#"{"peft_type": "SSF"}"#, ..ROW },
    Case { name: "bias tuning", config: r#"{"peft_type": "BIAS_TUNING"}"#, merge: Merge::Merges, ..ROW },
    // Prefixes are attended to, not prepended to the logits: no virtual positions.
    Case { name: "MAM adapter", config: r#"{"peft_type": "MAM_ADAPTER", "num_virtual_tokens": 4, "bottleneck_size": 8}"#, ..ROW },
    Case {
        name: "UniPELT",
        config: r#"{"peft_type": "UNIPELT", "num_virtual_tokens": 4, "r": 4, "lora_alpha": 4, "bottleneck_size": 8}"#,
        ..ROW
    },
];

/// The methods of the PEFT survey's tree (issue 16) and DyLoRA.
const SURVEY_METHODS: &[Case] = &[
    // Evaluation runs at eval_rank = r with no rank detached, so every row of A and column of
    // B gets a gradient; the 20 training steps sample ranks (dylora.rs checks the sampling).
    Case {
        name: "DyLoRA (frozen)",
        config: r#"{"peft_type": "DYLORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "update_mode": "frozen"}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "DyLoRA (all)",
        config: r#"{"peft_type": "DYLORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "update_mode": "all"}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "SparseMask (magnitude)",
        config: r#"{"peft_type": "SPARSE_MASK", "density": 0.05, "mask_type": "magnitude"}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "SparseMask (smallest magnitude: PaFi)",
        config: r#"{"peft_type": "SPARSE_MASK", "density": 0.05, "mask_type": "smallest_magnitude"}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "SparseMask (random)",
        config: r#"{"peft_type": "SPARSE_MASK", "density": 0.05, "mask_type": "random"}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "MoSLoRA",
        config: r#"{"peft_type": "MOSLORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "MoLoRA",
        config: r#"{"peft_type": "MOLORA", "r": 2, "num_experts": 3, "target_modules": ["q_proj", "v_proj", "down_proj"]}"#,
        ..ROW
    },
    Case { name: "MoV", config: r#"{"peft_type": "MOV", "num_experts": 3}"#, ..ROW },
    // Top-2 of 3 experts: the router learns through the renormalised top-k gates.
    Case { name: "MixLoRA", config: r#"{"peft_type": "MIXLORA", "r": 2, "num_experts": 3, "top_k": 2}"#, ..ROW },
    Case {
        name: "MixLoRA (down_proj of layer 1)",
        config: r#"{"peft_type": "MIXLORA", "r": 2, "num_experts": 4, "top_k": 2, "expert_modules": ["down_proj"], "layers_to_transform": [1]}"#,
        ..ROW
    },
    Case {
        name: "LoRA Dropout",
        config: r#"{"peft_type": "LORA_DROPOUT", "r": 4, "param_dropout": 0.3, "target_modules": ["q_proj", "v_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case { name: "SoRA", config: r#"{"peft_type": "SORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}"#, merge: Merge::Merges, ..ROW },
    Case {
        name: "Child-tuning (D)",
        config: r#"{"peft_type": "CHILD_TUNING", "child_ratio": 0.3, "target_modules": ["q_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case { name: "Compacter", config: r#"{"peft_type": "COMPACTER", "bottleneck_size": 8, "phm_dim": 4, "phm_rank": 1}"#, ..ROW },
    Case { name: "DePT", config: r#"{"peft_type": "DEPT", "num_virtual_tokens": 3, "r": 4, "max_length": 16}"#, virtual_tokens: 3, ..ROW },
    // Built from a config alone, the fused adapters / LoRA experts are random and frozen
    // (buffers): the contract checks the trained fusion and gates. MoLE on all linears: its
    // gates alone fit the training check's batch.
    Case { name: "AdapterFusion", config: r#"{"peft_type": "ADAPTER_FUSION", "num_adapters": 3, "bottleneck_size": 8}"#, ..ROW },
    Case { name: "MoLE", config: r#"{"peft_type": "MOLE", "r": 4, "num_experts": 4, "target_modules": "all-linear"}"#, ..ROW },
    Case { name: "AdaMix", config: r#"{"peft_type": "ADAMIX", "num_experts": 3, "bottleneck_size": 8}"#, ..ROW },
    Case { name: "SMoP", config: r#"{"peft_type": "SMOP", "num_virtual_tokens": 3, "num_prompts": 2}"#, virtual_tokens: 3, ..ROW },
    Case { name: "IDPG", config: r#"{"peft_type": "IDPG", "num_virtual_tokens": 3, "generator_hidden": 8}"#, virtual_tokens: 3, ..ROW },
    Case {
        name: "Prefix-Propagation",
        config: r#"{"peft_type": "PREFIX_PROPAGATION", "num_virtual_tokens": 3}"#,
        virtual_tokens: 3,
        ..ROW
    },
    // The masks start all ones (their procedures run in the Trainer: survey_masks.rs).
    Case {
        name: "FAR",
        config: r#"{"peft_type": "FAR", "trainable_ratio": 0.25, "target_modules": ["gate_proj", "up_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "LT-SFT",
        config: r#"{"peft_type": "LT_SFT", "density": 0.1, "target_modules": ["q_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "Fish-Dip",
        config: r#"{"peft_type": "FISH_DIP", "density": 0.1, "target_modules": ["q_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "PeriodicLoRA",
        config: r#"{"peft_type": "PERIODIC_LORA", "r": 4, "lora_alpha": 8, "merge_every": 3, "target_modules": ["q_proj", "v_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "Intrinsic SAID",
        config: r#"{"peft_type": "INTRINSIC_SAID", "intrinsic_dim": 50, "target_modules": ["q_proj", "v_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case {
        name: "structured diff pruning",
        config: r#"{"peft_type": "S_DIFF_PRUNING", "target_modules": ["q_proj", "down_proj"]}"#,
        merge: Merge::Merges,
        ..ROW
    },
    Case { name: "LPT", config: r#"{"peft_type": "LPT", "num_virtual_tokens": 3, "generator_hidden": 8}"#, virtual_tokens: 3, ..ROW },
];

/// The row named `name` (method-specific tests start from a row's config).
pub fn row(name: &str) -> &'static Case {
    methods().find(|c| c.name == name).unwrap_or_else(|| panic!("no contract row `{name}`"))
}
