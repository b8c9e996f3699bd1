//! `daxrace probes`: the plan for this kernel and what attached.
use anyhow::{Context, Result};
use daxrace::load::tracer::Tracer;

use super::{print_warnings, AttachArgs};

#[derive(clap::Args)]
pub struct ProbesArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ProbesArgs) -> Result<i32> {
    // Attaching is the only proof that a hook works on this kernel.
    let tracer = Tracer::load(&args.attach.options(daxrace::plan::Evidence::Full)?)
        .context("cannot attach")?;
    if args.json {
        let doc = serde_json::json!({
            "kernel": tracer.kernel_release,
            "symbols": tracer.symbols_from,
            "facts": tracer.facts,
            "patched_functions": tracer.patched,
            "hooks": tracer.statuses,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    print_warnings(&tracer);
    println!(
        "kernel {} (symbols by {})",
        tracer.kernel_release, tracer.symbols_from
    );
    println!(
        "facts: page._refcount@{} page.mapping@{} sizeof(page)={} idle refcount={} pin bias={}",
        tracer.facts.page_refcount_offset,
        tracer.facts.page_mapping_offset,
        tracer.facts.page_struct_size,
        tracer.facts.idle_refcount,
        tracer.facts.pin_bias
    );
    println!("{:<20} {:<9} {:<44} how", "hook", "state", "attached to");
    for s in &tracer.statuses {
        let state = if s.is_attached() {
            "attached"
        } else if s.standby.is_some() {
            "standby"
        } else if s.context {
            "absent"
        } else {
            "MISSING"
        };
        println!(
            "{:<20} {:<9} {:<44} {}",
            s.hook.as_str(),
            state,
            s.targets(),
            s.kinds()
        );
        if let Some(why) = &s.standby {
            println!("{:<20}   why: {why}", "");
        }
        for why in &s.avoided {
            println!("{:<20}   note: {why}", "");
        }
        if !s.is_attached() {
            for e in &s.errors {
                println!("{:<20}   why: {e}", "");
            }
        }
    }
    let (attached, standby) = daxrace::plan::attached_and_standby(&tracer.statuses);
    println!(
        "{attached} of {} hooks attached, {standby} on standby",
        tracer.statuses.len()
    );
    Ok(0)
}
