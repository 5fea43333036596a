//! Native loops must not outlive an exiting process. Node joins the libuv pool before it exits,
//! so `process.exit()` during a generate (or the CLI's second Ctrl-C) waited for the whole
//! generation. Each long job registers its cancel flag under its JS environment; the process's
//! 'exit' listener (src/native.ts) calls `cancelNativeWork`, and an env cleanup hook does the
//! same when a Worker is terminated, so loops stop at their next token.
use napi::Env;
use napi_derive::napi;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Running jobs' flags, by the raw pointer of the environment that started them.
static RUNNING: Mutex<Vec<(usize, Weak<AtomicBool>)>> = Mutex::new(Vec::new());
/// Environments that already have the cleanup hook.
static HOOKED: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn key(env: &Env) -> usize {
    env.raw() as usize
}

/// Makes `flag` (checked by a native loop between steps) set when `env` exits.
pub(crate) fn register(env: &Env, flag: &Arc<AtomicBool>) {
    let k = key(env);
    {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(_, w)| w.strong_count() > 0);
        running.push((k, Arc::downgrade(flag)));
    }
    let mut hooked = HOOKED.lock().unwrap_or_else(|p| p.into_inner());
    if hooked.get_or_insert_with(HashSet::new).insert(k) {
        // Best effort: without the hook, process.exit() still cancels through 'exit'.
        let _ = env.add_env_cleanup_hook(k, |k| {
            cancel(k);
            if let Some(set) = HOOKED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                set.remove(&k);
            }
        });
    }
}

fn cancel(k: usize) {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    for (_, flag) in running.iter().filter(|(e, _)| *e == k) {
        if let Some(f) = flag.upgrade() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// Stops every native loop this JS environment started (at its next step). Called when the
/// process (or Worker) exits; the jobs' promises are never seen.
#[napi]
pub fn cancel_native_work(env: Env) {
    cancel(key(&env));
}
