//! Prompt tuning, prefix tuning and p-tuning: text init, row-independent generation, packed
//! rows, unknown fields and config errors. Their fixtures and contract: `contract/table.rs`.
use crate::common;
use crate::contract;
use contract::error_of;
use peft_core::tuners::WithTuners;
use serde_json::json;

#[test]
fn bad_prompt_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 0}), "num_virtual_tokens"),
        (json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": -2}), "num_virtual_tokens"),
        (json!({"peft_type": "PROMPT_TUNING"}), "num_virtual_tokens"),
        (json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "prompt_tuning_init": "WORDS"}), "prompt_tuning_init"),
        (
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hi"}),
            "tokenizer_name_or_path",
        ),
        (
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "t"}),
            "prompt_tuning_init_text",
        ),
        (
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "t", "prompt_tuning_init_text": "hi"}),
            "prompt_tuning_init_token_ids",
        ),
        (json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 32}), "token_dim"),
        (json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2, "num_layers": 5}), "num_layers"),
        (json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2, "init_weights": "ones"}), "init_weights"),
        (json!({"peft_type": "LN_TUNING", "target_modules": ["q_proj"]}), "target_modules"),
        (json!({"peft_type": "LN_TUNING", "target_modules": ["nothing_here"]}), "target_modules"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(&format!("`{key}`")), "{cfg}: {e}");
    }
}

#[test]
fn unknown_fields_are_kept_with_a_warning() {
    let v = json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "my_field": 7});
    let (c, w) = peft_core::tuners::parse_config(&v, None, std::path::Path::new("t")).unwrap();
    assert!(w.iter().any(|w| w.message.contains("my_field")), "{w:?}");
    assert_eq!(c.to_json()["my_field"], 7);
}

#[test]
fn text_init_takes_token_ids() {
    let mut model = common::load_model();
    let mut tuners = peft_core::tuners::Tuners::new();
    let v = json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5, "prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "tiny",
                   "prompt_tuning_init_text": "ab", "prompt_tuning_init_token_ids": [7, 9]});
    tuners.inject(&mut model, "default", contract::config(&v), 0).unwrap();
    assert!(tuners.config("default").unwrap().to_json().get("prompt_tuning_init_token_ids").is_none());
    let w = model.store.by_name("prompt_encoder.default.embedding.weight").unwrap().value().to_vec2::<f32>().unwrap();
    let e = model.store.get(model.embed_tokens).value().to_vec2::<f32>().unwrap();
    for (i, id) in [7, 9, 7, 9, 7].iter().enumerate() {
        assert_eq!(w[i], e[*id]);
    }
}

/// Generation with virtual tokens from a left-padded batch: each row as if alone.
#[test]
fn generation_with_prompts_is_row_independent() {
    for v in
        [json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3})]
    {
        let (model, tuners) = contract::setup(&v, candle_core::DType::F32);
        let ctx = peft_core::model::Ctx::inference(&model.store).with_tuners(&tuners);
        let opts = peft_core::model::generate::GenerateOptions {
            max_new_tokens: 5,
            sampling: Default::default(),
            seed: 0,
            stop_token_ids: vec![],
        };
        let prompts = vec![vec![50u32, 352, 272, 335, 332, 223], vec![40u32, 270, 71]];
        let both = peft_core::model::generate::generate(&model, &ctx, &prompts, &opts, &mut |_| peft_core::model::generate::Flow::Continue)
            .unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = common::greedy_with(&model, Some(&tuners), p, 5);
            assert_eq!(both[i], alone, "{}: row {i}", v["peft_type"]);
        }
    }
}

#[test]
fn p_tuning_bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "P_TUNING", "num_virtual_tokens": 0}), "num_virtual_tokens"),
        (
            json!({"peft_type": "P_TUNING", "num_virtual_tokens": 2, "encoder_reparameterization_type": "LSTM"}),
            "encoder_reparameterization_type",
        ),
        (json!({"peft_type": "P_TUNING", "num_virtual_tokens": 2, "encoder_hidden_size": 0}), "encoder_hidden_size"),
        (json!({"peft_type": "P_TUNING", "num_virtual_tokens": 2, "encoder_dropout": 1.5}), "encoder_dropout"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(&format!("`{key}`")), "{cfg}: {e}");
    }
}

/// Packing with virtual tokens and key prefixes: every packed example attends the virtual
/// positions and its own tokens, so it equals the example run alone.
#[test]
fn packed_rows_with_prompts_equal_the_examples_run_alone() {
    use candle_core::{IndexOp, Tensor};
    for (v, nv) in [
        (json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), 3),
        (json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3}), 0),
    ] {
        let (model, tuners) = contract::setup(&v, candle_core::DType::F32);
        let ctx = peft_core::model::Ctx::inference(&model.store).with_tuners(&tuners);
        let ids = &common::inputs().input_ids[0];
        let (a, b) = (ids[..6].to_vec(), ids[6..16].to_vec());
        let alone = |x: &Vec<u32>| model.forward(&peft_core::model::Batch::new(vec![x.clone()]), &ctx, None, false).unwrap();
        let mut packed = peft_core::model::Batch::new(vec![[a.clone(), b.clone()].concat()]);
        packed.position_ids = Some(vec![(0..6).chain(0..10).collect()]);
        packed.segment_ids = Some(vec![[vec![0u32; 6], vec![1u32; 10]].concat()]);
        let p = model.forward(&packed, &ctx, None, false).unwrap();
        let (la, lb) = (alone(&a), alone(&b));
        let joined = Tensor::cat(&[la.i((.., ..nv + 6)).unwrap(), lb.i((.., nv..)).unwrap()], 1).unwrap();
        let d = common::max_abs_diff(&p, &joined);
        assert!(d < 1e-5, "{}: packed differs by {d}", v["peft_type"]);
    }
}
