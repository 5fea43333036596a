//! Instance-dependent prompts (SMoP's router, IDPG's and LPT's generators) read only the positions before
//! the first loss target (`batch::prompt_context_mask`): the prompt never sees the answer it is
//! scored on, and a training pass conditions as generation does (on its prompt).
use crate::common;
use crate::contract;
use candle_core::{DType, Tensor};
use common::max_abs_diff;
use peft_core::model::{loss, Batch, CausalLm, Ctx, KvCache};
use peft_core::tuners::{Tuners, WithTuners};
use serde_json::{json, Value};

const PROMPT: usize = 5;

fn methods() -> [(Value, usize); 3] {
    [
        (json!({"peft_type": "LPT", "num_virtual_tokens": 3, "generator_hidden": 8}), 3),
        (json!({"peft_type": "SMOP", "num_virtual_tokens": 3, "num_prompts": 2, "router_noise": 0.0}), 3),
        (json!({"peft_type": "IDPG", "num_virtual_tokens": 3, "generator_hidden": 8}), 3),
    ]
}

/// Two rows of 12 tokens, the second left-padded by 2; labels: -100 over the prompt (the first
/// `PROMPT` attended tokens) and padding, the tokens after it.
fn completion_batch() -> (Batch, Vec<Vec<i64>>) {
    let ids: Vec<Vec<u32>> = vec![(40..52).collect(), [vec![0, 0], (60..70).collect()].concat()];
    let mask = vec![vec![1u8; 12], [vec![0u8; 2], vec![1; 10]].concat()];
    let labels = ids
        .iter()
        .zip(&mask)
        .map(|(row, m)| {
            let first = m.iter().position(|&x| x == 1).unwrap();
            row.iter().enumerate().map(|(i, &id)| if i < first + PROMPT { -100 } else { i64::from(id) }).collect()
        })
        .collect();
    (Batch { ids, attention_mask: Some(mask), position_ids: None, segment_ids: None }, labels)
}

fn logits(model: &CausalLm, tuners: &Tuners, batch: &Batch, labels: &[Vec<i64>]) -> Tensor {
    let ctx = Ctx::inference(&model.store).with_tuners(tuners).with_labels(labels);
    model.forward(batch, &ctx, None, false).unwrap()
}

/// Changing a completion token leaves the logits at every earlier position unchanged (the
/// prompt's positions included), and changes the later ones.
#[test]
fn a_completion_token_does_not_reach_earlier_positions() {
    for (cfg, nv) in methods() {
        let (model, tuners) = contract::setup(&cfg, DType::F64);
        let (batch, labels) = completion_batch();
        let before = logits(&model, &tuners, &batch, &labels);
        let at = 9; // a completion position in both rows
        let (mut changed, mut changed_labels) = (batch.clone(), labels.clone());
        for r in 0..2 {
            changed.ids[r][at] = 100 + r as u32;
            changed_labels[r][at] = 100 + r as i64;
        }
        let after = logits(&model, &tuners, &changed, &changed_labels);
        // Padding's own logits are left out: a padded query attends uniformly (as transformers'),
        // future keys included, in the base model too.
        let mask: Vec<Vec<u8>> =
            batch.attention_mask.as_ref().unwrap().iter().map(|r| [vec![1u8; nv], r[..at].to_vec()].concat()).collect();
        let earlier = common::max_masked_diff(&before.narrow(1, 0, nv + at).unwrap(), &after.narrow(1, 0, nv + at).unwrap(), &mask);
        assert!(earlier == 0.0, "{}: earlier logits moved by {earlier}", cfg["peft_type"]);
        let later = max_abs_diff(&before.narrow(1, nv + at, 12 - at).unwrap(), &after.narrow(1, nv + at, 12 - at).unwrap());
        assert!(later > 1e-6, "{}: the changed token has no effect", cfg["peft_type"]);
    }
}

/// The loss of every prediction but the last one is unchanged when only the last token (the
/// target of the last prediction) changes.
#[test]
fn the_last_target_does_not_change_the_other_losses() {
    for (cfg, _) in methods() {
        let (model, tuners) = contract::setup(&cfg, DType::F64);
        let (batch, labels) = completion_batch();
        let loss_without_last = |batch: &Batch, labels: &[Vec<i64>]| {
            let ctx = Ctx::inference(&model.store).with_tuners(&tuners).with_labels(labels);
            let logits = model.forward(batch, &ctx, None, false).unwrap();
            let scored: Vec<Vec<i64>> = labels.iter().map(|r| [&r[..r.len() - 1], &[-100]].concat()).collect();
            loss::causal_lm_loss(&logits, &scored).unwrap().to_vec0::<f64>().unwrap()
        };
        let (mut changed, mut changed_labels) = (batch.clone(), labels.clone());
        for r in 0..2 {
            changed.ids[r][11] = 120;
            changed_labels[r][11] = 120;
        }
        let (a, b) = (loss_without_last(&batch, &labels), loss_without_last(&changed, &changed_labels));
        assert!(a == b, "{}: {a} vs {b}", cfg["peft_type"]);
    }
}

/// A training pass (prompt labelled -100, completion scored) gives the logits that generation
/// gives: prefill of the prompt, then the completion one token at a time from the cache.
#[test]
fn training_conditions_as_generation_does() {
    for (cfg, nv) in methods() {
        let (model, tuners) = contract::setup(&cfg, DType::F64);
        let row: Vec<u32> = (40..50).collect();
        let labels = vec![row.iter().enumerate().map(|(i, &id)| if i < PROMPT { -100 } else { i64::from(id) }).collect::<Vec<_>>()];
        let full = logits(&model, &tuners, &Batch::new(vec![row.clone()]), &labels);
        let ctx = Ctx::inference(&model.store).with_tuners(&tuners);
        let mut cache = KvCache::new(model.layers.len());
        let mut steps = vec![model.forward(&Batch::new(vec![row[..PROMPT].to_vec()]), &ctx, Some(&mut cache), false).unwrap()];
        for &tok in &row[PROMPT..] {
            steps.push(model.forward(&Batch::new(vec![vec![tok]]), &ctx, Some(&mut cache), false).unwrap());
        }
        let cached = Tensor::cat(&steps, 1).unwrap();
        assert_eq!(cached.dims(), full.dims());
        let d = max_abs_diff(&cached, &full);
        assert!(d < 1e-10, "{}: training pass vs generation: {d}", cfg["peft_type"]);
        // Without labels a pass reads every position, as a prefill of the whole row does.
        let unlabelled = model.forward(&Batch::new(vec![row.clone()]), &ctx, None, false).unwrap();
        assert!(
            max_abs_diff(&unlabelled.narrow(1, 0, nv).unwrap(), &full.narrow(1, 0, nv).unwrap()) > 1e-8,
            "{}: the prompt depends on the input",
            cfg["peft_type"]
        );
    }
}

/// Plain text (every label a target): the prompt reads the first attended token only.
#[test]
fn plain_text_conditions_on_the_first_token() {
    let mask = [vec![0u8, 0], vec![1; 4]].concat();
    let labels = vec![[vec![-100, -100], vec![7, 8, 9, 10]].concat()];
    let m = peft_core::model::batch::prompt_context_mask(Some(std::slice::from_ref(&mask)), &labels, 1, 6).unwrap();
    assert_eq!(m, vec![vec![0, 0, 1, 0, 0, 0]]);
    let chat = vec![vec![-100, -100, 3, 4, -100, 6]];
    let m = peft_core::model::batch::prompt_context_mask(None, &chat, 1, 6).unwrap();
    assert_eq!(m, vec![vec![1, 1, 0, 0, 0, 0]], "a later user turn is not read either");
    let e = peft_core::model::batch::prompt_context_mask(None, &chat, 2, 6).unwrap_err().to_string();
    assert!(e.contains("labels"), "{e}");
}
