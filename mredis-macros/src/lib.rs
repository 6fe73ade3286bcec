//! Code generator for [mredis](https://docs.rs/mredis): reads `commands.toml`
//! (embedded at compile time, so editing the table rebuilds) and generates the
//! routed methods of `mredis::MRedis`, `mredis::aio::MRedis` and
//! `mredis::KeyPipeline`, plus the table as data. Not meant to be used
//! directly; `mredis` invokes these macros once each.
//!
//! A malformed table is a compile error naming `commands.toml:LINE` and the
//! command, with every problem reported at once (from `command_table!`).

use proc_macro::TokenStream;

mod doc;
mod expand;
mod table;
mod validate;

const TABLE: &str = include_str!("../commands.toml");

fn load(src: &str) -> Result<table::Table, syn::Error> {
    let (table, mut problems) = table::parse(src);
    validate::validate(&table, &mut problems);
    match problems.into_syn_error() {
        Some(err) => Err(err),
        None => Ok(table),
    }
}

fn with_table(f: impl FnOnce(&table::Table) -> proc_macro2::TokenStream) -> TokenStream {
    // Problems are reported once, by `command_table!`; the others stay quiet.
    load(TABLE).map(|t| f(&t)).unwrap_or_default().into()
}

/// The methods of the sync client `mredis::MRedis`.
#[proc_macro]
pub fn sync_methods(_input: TokenStream) -> TokenStream {
    with_table(|t| expand::methods(t, expand::Target::Sync))
}

/// The methods of the async client `mredis::aio::MRedis`.
#[proc_macro]
pub fn async_methods(_input: TokenStream) -> TokenStream {
    with_table(|t| expand::methods(t, expand::Target::Async))
}

/// The chainable methods of `mredis::KeyPipeline`.
#[proc_macro]
pub fn pipeline_methods(_input: TokenStream) -> TokenStream {
    with_table(|t| expand::methods(t, expand::Target::Pipeline))
}

/// The chainable methods of `mredis::FleetPipeline`.
#[proc_macro]
pub fn fleet_pipeline_methods(_input: TokenStream) -> TokenStream {
    with_table(|t| expand::methods(t, expand::Target::Fleet))
}

/// The table as data (`pub static COMMANDS`), and every problem in the table
/// as compile errors.
#[proc_macro]
pub fn command_table(_input: TokenStream) -> TokenStream {
    load(TABLE)
        .map(|t| expand::table_data(&t))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// `pub fn examples()`: example invocations of routed methods, for tests.
#[proc_macro]
pub fn command_examples(_input: TokenStream) -> TokenStream {
    with_table(expand::examples)
}

/// The overview of every command by class, as a Markdown string literal.
#[proc_macro]
pub fn command_docs(_input: TokenStream) -> TokenStream {
    let text = load(TABLE).map(|t| doc::overview(&t)).unwrap_or_default();
    quote::quote!(#text).into()
}

/// Checks a table given as a string literal and reports its problems like
/// the real table's. For tests of the table format; generates nothing.
#[proc_macro]
pub fn check_table(input: TokenStream) -> TokenStream {
    let lit = syn::parse_macro_input!(input as syn::LitStr);
    match load(&lit.value()) {
        Ok(_) => TokenStream::new(),
        Err(err) => {
            // Point at the literal the caller wrote.
            let mut out = syn::Error::new(lit.span(), "the command table has problems (below)");
            for e in err {
                out.combine(syn::Error::new(lit.span(), e.to_string()));
            }
            out.into_compile_error().into()
        }
    }
}
