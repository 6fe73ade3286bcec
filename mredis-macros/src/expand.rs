//! Turns a validated table into Rust: the methods of the sync client, the
//! async client and the per-key pipeline, plus the table itself as data.
//! Generated bodies only call small `crate::` helpers (routing, fan-out,
//! scatter-gather), so the expansion stays small and the logic lives in
//! ordinary, tested library code.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};

use crate::doc;
use crate::table::{BlockAt, Class, Command, KeySpec, Merge, Method, Piece, Table, Unit};

/// What a method is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Sync,
    Async,
    Pipeline,
    /// The cross-server pipeline: each command is routed on its own.
    Fleet,
}

fn arg_idents(sig: &syn::Signature) -> Vec<syn::Ident> {
    sig.inputs
        .iter()
        .filter_map(|i| match i {
            syn::FnArg::Typed(p) => match &*p.pat {
                syn::Pat::Ident(id) => Some(id.ident.clone()),
                _ => None,
            },
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The generic parameters of a generated method: `'a` first (the table's
/// signatures may borrow with it, as redis-rs's do), the row's own, then `RV`
/// (unless the method has a fixed return type).
fn generics(sig: &syn::Signature, target: Target, with_rv: bool) -> syn::Generics {
    let mut g = syn::Generics::default();
    let has_a = sig
        .generics
        .params
        .iter()
        .any(|p| matches!(p, syn::GenericParam::Lifetime(l) if l.lifetime.ident == "a"));
    if !has_a {
        g.params.push(syn::parse_quote!('a));
    }
    for param in &sig.generics.params {
        let mut param = param.clone();
        if target == Target::Async
            && let syn::GenericParam::Type(t) = &mut param
        {
            t.bounds.push(syn::parse_quote!(::std::marker::Send));
            t.bounds.push(syn::parse_quote!(::std::marker::Sync));
            t.bounds.push(syn::parse_quote!('a));
        }
        g.params.push(param);
    }
    if with_rv && matches!(target, Target::Sync | Target::Async) {
        g.params.push(syn::parse_quote!(RV: ::redis::FromRedisValue));
    }
    g.where_clause = sig.generics.where_clause.clone();
    g
}

/// Builds the `redis::Cmd`: redis-rs's own constructor unless the row gives
/// a wire template.
fn build_cmd(m: &Method, sig: &syn::Signature) -> TokenStream {
    let args = arg_idents(sig);
    match &m.cmd {
        None => {
            let name = &sig.ident;
            quote!(::redis::Cmd::#name(#(#args),*))
        }
        Some(pieces) => {
            let mut iter = pieces.iter();
            let first = match iter.next() {
                Some(Piece::Word(w)) => w.clone(),
                _ => String::new(),
            };
            let rest = iter.map(|p| match p {
                Piece::Word(w) => quote!(__cmd.arg(#w);),
                Piece::Arg(a) => {
                    let id = syn::Ident::new(a, Span::call_site());
                    quote!(__cmd.arg(#id);)
                }
                Piece::Count(a) => {
                    let id = syn::Ident::new(a, Span::call_site());
                    quote!(__cmd.arg(::redis::ToRedisArgs::num_of_args(&#id));)
                }
            });
            quote!({
                let mut __cmd = ::redis::cmd(#first);
                #(#rest)*
                __cmd
            })
        }
    }
}

/// Collects every key of a colocated or multi method into `__keys`.
fn collect_keys(m: &Method) -> TokenStream {
    let singles = m.key.iter().chain(m.keys.iter()).map(|k| {
        let id = syn::Ident::new(k, Span::call_site());
        quote!(crate::routing::push_keys(&mut __keys, &#id);)
    });
    let pairs = m.pairs.iter().map(|k| {
        let id = syn::Ident::new(k, Span::call_site());
        quote!(crate::routing::push_pair_keys(&mut __keys, &#id);)
    });
    quote! {
        let mut __keys: ::std::vec::Vec<::std::vec::Vec<u8>> = ::std::vec::Vec::new();
        #(#singles)*
        #(#pairs)*
    }
}

fn merge_tokens(m: &Method) -> TokenStream {
    match m.merge {
        Some(Merge::Ordered) => quote!(crate::Merge::Ordered),
        Some(Merge::Sum) => quote!(crate::Merge::Sum),
        Some(Merge::Ok) | None => quote!(crate::Merge::Ok),
    }
}

/// `#[cfg(feature = ...)]` (and its docs.rs badge) for rows of a feature.
fn feature_attrs(cmd: &Command) -> TokenStream {
    match &cmd.feature {
        Some(f) => quote! {
            #[cfg(feature = #f)]
            #[cfg_attr(docsrs, doc(cfg(feature = #f)))]
        },
        None => quote!(),
    }
}

fn doc_attrs(cmd: &Command, m: &Method) -> TokenStream {
    let lines = doc::method_doc(cmd, m);
    let alias = &cmd.name;
    quote! {
        #(#[doc = #lines])*
        #[doc(alias = #alias)]
    }
}

fn method(cmd: &Command, m: &Method, target: Target) -> Option<TokenStream> {
    let sig = m.sig.as_ref()?;
    let class = cmd.class?;
    // Pipelines answer at `query` time: no fan-out, and no fixed return types
    // (redis-rs's `Pipeline` has no `get_int` either).
    if matches!(target, Target::Pipeline | Target::Fleet) && (class == Class::All || m.returns.is_some()) {
        return None;
    }
    let name = &sig.ident;
    let fixed = m.returns_type();
    let generics = generics(sig, target, fixed.is_none());
    let (params, _, where_clause) = generics.split_for_impl();
    let inputs = &sig.inputs;
    let docs = doc_attrs(cmd, m);
    let docs = {
        let cfg = feature_attrs(cmd);
        quote!(#cfg #docs)
    };
    let build = build_cmd(m, sig);
    let redis_name = &cmd.name;
    let allow = quote! {
        #[allow(clippy::extra_unused_lifetimes, clippy::needless_lifetimes, clippy::too_many_arguments)]
    };

    if target == Target::Pipeline {
        let check = match class {
            Class::Key => {
                let key = syn::Ident::new(m.key.as_deref().unwrap_or("key"), Span::call_site());
                quote!(self.check_key(#redis_name, &#key);)
            }
            _ => {
                let collect = collect_keys(m);
                quote!(#collect self.check_keys(#redis_name, &__keys);)
            }
        };
        return Some(quote! {
            #docs
            #allow
            #[inline]
            pub fn #name #params (&mut self, #inputs) -> &mut Self #where_clause {
                #check
                self.add_command(#build)
            }
        });
    }

    if target == Target::Fleet {
        let route = match class {
            Class::Key => {
                let key = syn::Ident::new(m.key.as_deref().unwrap_or("key"), Span::call_site());
                quote!(let __server = self.route_key(#redis_name, &#key);)
            }
            _ => {
                let collect = collect_keys(m);
                quote!(#collect let __server = self.route_keys(#redis_name, &__keys);)
            }
        };
        return Some(quote! {
            #docs
            #allow
            #[inline]
            pub fn #name #params (&mut self, #inputs) -> &mut Self #where_clause {
                #route
                self.add_routed_command(__server, #build)
            }
        });
    }

    let awaiting = if target == Target::Async {
        quote!(.await)
    } else {
        quote!()
    };
    let asyncness = if target == Target::Async {
        quote!(async)
    } else {
        quote!()
    };
    let rv = match &fixed {
        Some(ty) => quote!(#ty),
        None => quote!(RV),
    };
    let (ret, body) = match class {
        Class::Key => {
            let key = syn::Ident::new(m.key.as_deref().unwrap_or("key"), Span::call_site());
            (
                quote!(::redis::RedisResult<#rv>),
                quote! {
                    let __f = self.call();
                    let __route = __f.core().route_key(#redis_name, &#key)?;
                    let __cmd = #build;
                    __f.run(__route, &__cmd) #awaiting
                },
            )
        }
        Class::Colocated => {
            let collect = collect_keys(m);
            (
                quote!(::redis::RedisResult<#rv>),
                quote! {
                    #collect
                    let __f = self.call();
                    let __route = __f.core().route_colocated(#redis_name, &__keys)?;
                    let __cmd = #build;
                    __f.run(__route, &__cmd) #awaiting
                },
            )
        }
        Class::Multi => {
            let stride = m.stride.unwrap_or(1);
            let merge = merge_tokens(m);
            (
                quote!(::redis::RedisResult<#rv>),
                quote! {
                    let __cmd = #build;
                    let __f = self.call();
                    let __route = __f.core().route_split(&__cmd, #stride, #merge);
                    __f.run(__route, &__cmd) #awaiting
                },
            )
        }
        Class::All => (
            quote!(::std::result::Result<crate::PerServer<#rv>, crate::FanOutError<#rv>>),
            quote! {
                let __cmd = #build;
                self.call().fan_out(&__cmd) #awaiting
            },
        ),
        Class::Omitted => return None,
    };
    Some(quote! {
        #docs
        #allow
        #[inline]
        pub #asyncness fn #name #params (&self, #inputs) -> #ret #where_clause {
            #body
        }
    })
}

/// The names the table's signatures may use without a path.
fn prelude() -> TokenStream {
    quote! {
        #[allow(unused_imports)]
        use ::redis::*;
        #[allow(unused_imports)]
        use ::std::num::NonZeroUsize;
        #[allow(unused_imports)]
        use ::serde::Serialize;
    }
}

/// The inherent impl for one target.
pub fn methods(table: &Table, target: Target) -> TokenStream {
    let methods = table
        .commands
        .iter()
        .flat_map(|c| c.methods.iter().filter_map(move |m| method(c, m, target)));
    let self_ty = match target {
        Target::Sync => quote!(crate::MRedis),
        Target::Async => quote!(crate::aio::MRedis),
        Target::Pipeline => quote!(crate::KeyPipeline),
        Target::Fleet => quote!(crate::FleetPipeline),
    };
    let prelude = prelude();
    quote! {
        const _: () = {
            #prelude
            #[automatically_derived]
            impl #self_ty {
                #(#methods)*
            }
        };
    }
}

/// The table as data: `pub static COMMANDS: &[crate::CommandSpec]`.
pub fn table_data(table: &Table) -> TokenStream {
    let rows = table.commands.iter().filter_map(|c| {
        let class = match c.class? {
            Class::Key => quote!(crate::RouteClass::Key),
            Class::All => quote!(crate::RouteClass::All),
            Class::Multi => quote!(crate::RouteClass::Multi),
            Class::Colocated => quote!(crate::RouteClass::Colocated),
            Class::Omitted => quote!(crate::RouteClass::Omitted),
        };
        let name = &c.name;
        let group = &c.group;
        let summary = &c.summary;
        let since = opt_str(c.since.as_deref());
        let reason = opt_str(c.reason.as_deref());
        let feature = opt_str(c.feature.as_deref());
        let reply = match c.reply {
            Some(r) => {
                let v = proc_macro2::Ident::new(r.variant(), proc_macro2::Span::call_site());
                quote!(::std::option::Option::Some(crate::Reply::#v))
            }
            None => quote!(::std::option::Option::None),
        };
        let key_spec = key_spec_tokens(c.key_spec);
        let access = proc_macro2::Ident::new(c.access.variant(), proc_macro2::Span::call_site());
        let cacheable = c.cacheable;
        let block = match &c.block {
            None => quote!(::std::option::Option::None),
            Some(b) => {
                let at = match &b.at {
                    BlockAt::Index(i) => {
                        let i = *i as isize;
                        quote!(crate::BlockAt::Index(#i))
                    }
                    BlockAt::After { word, until } => {
                        let until = opt_str(until.as_deref());
                        quote!(crate::BlockAt::After { word: #word, until: #until })
                    }
                };
                let unit = match b.unit {
                    Unit::Seconds => quote!(crate::TimeUnit::Seconds),
                    Unit::Milliseconds => quote!(crate::TimeUnit::Milliseconds),
                };
                quote!(::std::option::Option::Some(crate::Block { at: #at, unit: #unit }))
            }
        };
        let methods = c.methods.iter().map(|m| {
            let mname = m.name();
            let sig = &m.sig_text;
            let keys = m.key_args();
            let returns = opt_str(m.returns.as_deref());
            let (stride, merge) = if c.class == Some(Class::Multi) {
                let stride = m.stride.unwrap_or(1);
                let merge = merge_tokens(m);
                (
                    quote!(::std::option::Option::Some(#stride)),
                    quote!(::std::option::Option::Some(#merge)),
                )
            } else {
                (quote!(::std::option::Option::None), quote!(::std::option::Option::None))
            };
            quote!(crate::MethodSpec {
                name: #mname,
                signature: #sig,
                key_args: &[#(#keys),*],
                returns: #returns,
                stride: #stride,
                merge: #merge,
            })
        });
        Some(quote! {
            crate::CommandSpec {
                name: #name,
                group: #group,
                class: #class,
                summary: #summary,
                since: #since,
                reason: #reason,
                feature: #feature,
                reply: #reply,
                key_spec: #key_spec,
                access: crate::Access::#access,
                block: #block,
                cacheable: #cacheable,
                methods: &[#(#methods),*],
            }
        })
    });
    quote! {
        /// Every command of `commands.toml`, in table order: its Redis name
        /// (subcommands as `"CLIENT LIST"`), how it is routed, and the methods
        /// generated for it. Omitted commands are listed with their reason;
        /// rows of a cargo feature are listed whether it is on or not.
        pub static COMMANDS: &[crate::CommandSpec] = &[#(#rows),*];
    }
}

/// A `crate::KeySpec` value (positions were checked to be positive).
fn key_spec_tokens(spec: KeySpec) -> TokenStream {
    match spec {
        KeySpec::Keyless => quote!(crate::KeySpec::Keyless),
        KeySpec::AskServer => quote!(crate::KeySpec::AskServer),
        KeySpec::Channel(at) => {
            let at = at as usize;
            quote!(crate::KeySpec::Channel(#at))
        }
        KeySpec::Range { first, last, step } => {
            let (first, last, step) = (first as usize, last as isize, step as usize);
            quote!(crate::KeySpec::Range { first: #first, last: #last, step: #step })
        }
        KeySpec::NumKeys { dest, count_at, step } => {
            let (count_at, step) = (count_at as usize, step as usize);
            let dest = match dest {
                Some(d) => {
                    let d = d as usize;
                    quote!(::std::option::Option::Some(#d))
                }
                None => quote!(::std::option::Option::None),
            };
            quote!(crate::KeySpec::NumKeys { count_at: #count_at, step: #step, dest: #dest })
        }
    }
}

fn opt_str(s: Option<&str>) -> TokenStream {
    match s {
        Some(s) => quote!(::std::option::Option::Some(#s)),
        None => quote!(::std::option::Option::None),
    }
}

/// The bound names of a generic type parameter (`ToSingleRedisArg`, ...).
fn bounds_of(sig: &syn::Signature, ident: &syn::Ident) -> Option<Vec<String>> {
    sig.generics.params.iter().find_map(|p| match p {
        syn::GenericParam::Type(t) if &t.ident == ident => Some(
            t.bounds
                .iter()
                .filter_map(|b| match b {
                    syn::TypeParamBound::Trait(tb) => tb.path.segments.last().map(|s| s.ident.to_string()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    })
}

fn generic_param(sig: &syn::Signature, ty: &syn::Type) -> Option<Vec<String>> {
    if let syn::Type::Path(p) = ty
        && p.qself.is_none()
        && p.path.segments.len() == 1
    {
        return bounds_of(sig, &p.path.segments[0].ident);
    }
    None
}

/// A sample value for one argument, derived from its type; `None` when the
/// row must give an `example`.
fn sample_arg(sig: &syn::Signature, name: &str, ty: &syn::Type, is_key: bool, is_pairs: bool) -> Option<TokenStream> {
    let k1 = format!("{name}_1");
    let k2 = format!("{name}_2");
    if let Some(bounds) = generic_param(sig, ty) {
        let single = bounds.iter().any(|b| b == "ToSingleRedisArg");
        let multi = bounds.iter().any(|b| b == "ToRedisArgs");
        return match (is_key, single, multi) {
            (true, true, _) => Some(quote!(#name)),
            (true, false, true) => Some(quote!(::std::vec![#k1, #k2])),
            (false, _, true) | (false, true, _) => Some(quote!("1")),
            _ => None,
        };
    }
    match ty {
        syn::Type::Reference(r) => match &*r.elem {
            syn::Type::Slice(slice) => match &*slice.elem {
                syn::Type::Tuple(_) if is_key || is_pairs => Some(quote!(&[(#k1, "1"), (#k2, "2")][..])),
                syn::Type::Tuple(_) => Some(quote!(&[("f1", "1")][..])),
                _ if is_key => Some(quote!(&[#k1, #k2][..])),
                _ => Some(quote!(&["1"][..])),
            },
            inner => {
                let value = sample_arg(sig, name, inner, is_key, is_pairs)?;
                Some(quote!(&#value))
            }
        },
        syn::Type::Path(p) => {
            let last = p.path.segments.last()?.ident.to_string();
            Some(match last.as_str() {
                "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => quote!(1),
                "f32" | "f64" => quote!(1.0),
                "bool" => quote!(true),
                "Option" => quote!(::std::option::Option::None),
                "Direction" => quote!(Direction::Left),
                "Unit" => quote!(geo::Unit::Meters),
                // redis-rs option types without a Default.
                "Expiry" => quote!(Expiry::EX(10)),
                "ExpireOption" => quote!(ExpireOption::NONE),
                "ValueComparison" => quote!(ValueComparison::IFEQ("1".to_string())),
                "StreamMaxlen" => quote!(streams::StreamMaxlen::Equals(10)),
                "StreamNackOptions" => quote!(streams::StreamNackOptions::new(streams::StreamNackMode::Silent)),
                "StreamTrimOptions" => quote!(streams::StreamTrimOptions::maxlen(
                    streams::StreamTrimmingMode::Exact,
                    10
                )),
                _ => quote!(::std::default::Default::default()),
            })
        }
        _ => None,
    }
}

/// Example invocations for tests: for every routed method, a function that
/// builds the command it sends and the keys mredis routes it by, from the
/// row's `example` or, without one, from sample values of the argument
/// types. The routing test compares these keys with the server's own
/// `COMMAND GETKEYS`.
pub fn examples(table: &Table) -> TokenStream {
    let items = table.commands.iter().flat_map(|c| {
        c.methods.iter().filter_map(move |m| {
            let sig = m.sig.as_ref()?;
            let class = c.class?;
            if matches!(class, Class::All | Class::Omitted) {
                return None;
            }
            let idents = arg_idents(sig);
            let values: Vec<TokenStream> = match &m.example {
                Some(example) => {
                    let args: syn::punctuated::Punctuated<syn::Expr, syn::Token![,]> =
                        syn::parse::Parser::parse_str(syn::punctuated::Punctuated::parse_terminated, example).ok()?;
                    args.iter().map(|e| quote!(#e)).collect()
                }
                None => {
                    let key_args = m.key_args();
                    let mut out = Vec::new();
                    for input in &sig.inputs {
                        let syn::FnArg::Typed(pt) = input else { return None };
                        let syn::Pat::Ident(id) = &*pt.pat else { return None };
                        let name = id.ident.to_string();
                        let is_key = key_args.contains(&name);
                        // A `key` row routes on one key even where redis-rs
                        // accepts any `ToRedisArgs` for it.
                        if class == Class::Key && is_key {
                            out.push(quote!(#name));
                            continue;
                        }
                        let is_pairs = m.pairs.as_deref() == Some(name.as_str());
                        out.push(sample_arg(sig, &name, &pt.ty, is_key, is_pairs)?);
                    }
                    out
                }
            };
            if idents.len() != values.len() {
                return None;
            }
            let lets = idents.iter().zip(values.iter()).map(|(id, e)| quote!(let #id = #e;));
            let build = build_cmd(m, sig);
            // The keys exactly as the generated method routes them.
            let collect = match class {
                Class::Key => {
                    let key = syn::Ident::new(m.key.as_deref().unwrap_or("key"), Span::call_site());
                    quote!(let __keys = crate::routing::key_args(&#key);)
                }
                Class::Multi => {
                    let stride = m.stride.unwrap_or(1);
                    quote!(let __cmd = #build; let __keys = crate::routing::split_keys(&__cmd, #stride);)
                }
                _ => collect_keys(m),
            };
            let build = if class == Class::Multi { quote!(__cmd) } else { build };
            let mname = m.name();
            let cname = &c.name;
            let fname = format_ident!("__example_{}", sig.ident);
            let cfg = c.feature.as_deref().map(|f| quote!(#[cfg(feature = #f)]));
            Some(quote! {
                #cfg
                {
                    #[allow(clippy::let_unit_value, unused_variables, clippy::useless_vec)]
                    fn #fname() -> (::std::vec::Vec<::std::vec::Vec<u8>>, ::redis::Cmd) {
                        #(#lets)*
                        #collect
                        (__keys, #build)
                    }
                    __examples.push(crate::Example { command: #cname, method: #mname, build: #fname });
                }
            })
        })
    });
    let prelude = prelude();
    quote! {
        /// Example invocations of routed methods, for checking routing
        /// against a live server's `COMMAND GETKEYS`.
        #[doc(hidden)]
        pub fn examples() -> ::std::vec::Vec<crate::Example> {
            #prelude
            let mut __examples = ::std::vec::Vec::new();
            #(#items)*
            __examples
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::parse;

    #[test]
    fn key_method_routes_then_builds_with_redis_rs() {
        let (table, problems) = parse(
            "[[command]]\nname = \"SETEX\"\ngroup = \"string\"\nclass = \"key\"\nsummary = \"s\"\nmethods = [{ sig = \"set_ex<K: ToSingleRedisArg, V: ToSingleRedisArg>(key: K, value: V, seconds: u64)\", key = \"key\" }]\n",
        );
        assert!(problems.messages.is_empty());
        let out = methods(&table, Target::Sync).to_string();
        assert!(
            out.contains(
                "pub fn set_ex < 'a , K : ToSingleRedisArg , V : ToSingleRedisArg , RV : :: redis :: FromRedisValue >"
            ),
            "{out}"
        );
        assert!(
            out.contains("let __f = self . call () ; let __route = __f . core () . route_key (\"SETEX\" , & key) ?"),
            "{out}"
        );
        assert!(
            out.contains(":: redis :: Cmd :: set_ex (key , value , seconds)"),
            "{out}"
        );
        let out = methods(&table, Target::Async).to_string();
        assert!(out.contains("pub async fn set_ex"), "{out}");
        assert!(out.contains("K : ToSingleRedisArg + :: std :: marker :: Send"), "{out}");
    }

    #[test]
    fn template_builds_words_and_args() {
        let (table, _) = parse(
            "[[command]]\nname = \"OBJECT FREQ\"\ngroup = \"generic\"\nclass = \"key\"\nsummary = \"s\"\nmethods = [{ sig = \"object_freq_x<K: ToSingleRedisArg>(key: K)\", key = \"key\", cmd = \"OBJECT FREQ {key}\" }]\n",
        );
        let out = methods(&table, Target::Pipeline).to_string();
        assert!(
            out.contains(":: redis :: cmd (\"OBJECT\") ; __cmd . arg (\"FREQ\") ; __cmd . arg (key) ;"),
            "{out}"
        );
        assert!(out.contains("-> & mut Self"), "{out}");
    }

    #[test]
    fn returns_replaces_rv_and_leaves_pipelines_out() {
        let (table, problems) = parse(
            "[[command]]\nname = \"GET\"\ngroup = \"string\"\nclass = \"key\"\nsummary = \"s\"\nmethods = [{ sig = \"get_int<K: ToSingleRedisArg>(key: K)\", cmd = \"GET {key}\", key = \"key\", returns = \"Option<isize>\" }]\n",
        );
        assert!(problems.messages.is_empty());
        let out = methods(&table, Target::Sync).to_string();
        assert!(out.contains("pub fn get_int < 'a , K : ToSingleRedisArg > (& self , key : K) -> :: redis :: RedisResult < Option < isize > >"), "{out}");
        assert!(!out.contains("RV :"), "{out}");
        let out = methods(&table, Target::Async).to_string();
        assert!(out.contains("pub async fn get_int"), "{out}");
        assert!(out.contains("-> :: redis :: RedisResult < Option < isize > >"), "{out}");
        for target in [Target::Pipeline, Target::Fleet] {
            assert!(!methods(&table, target).to_string().contains("get_int"));
        }
    }

    #[test]
    fn feature_gates_methods_and_examples() {
        let (table, problems) = parse(
            "[[command]]\nname = \"BF.CARD\"\ngroup = \"module\"\nclass = \"key\"\nsince = \"RedisBloom\"\nfeature = \"bloom\"\nsummary = \"s\"\nmethods = [{ sig = \"bf_card<K: ToSingleRedisArg>(key: K)\", key = \"key\" }]\n",
        );
        assert!(problems.messages.is_empty());
        let gate = "# [cfg (feature = \"bloom\")] # [cfg_attr (docsrs , doc (cfg (feature = \"bloom\")))]";
        for target in [Target::Sync, Target::Async, Target::Pipeline, Target::Fleet] {
            let out = methods(&table, target).to_string();
            assert!(out.contains(gate), "{target:?}: {out}");
        }
        let out = examples(&table).to_string();
        assert!(out.contains("# [cfg (feature = \"bloom\")] {"), "{out}");
        // The table data lists the row either way.
        let out = table_data(&table).to_string();
        assert!(!out.contains("cfg"), "{out}");
        assert!(
            out.contains("feature : :: std :: option :: Option :: Some (\"bloom\")"),
            "{out}"
        );
    }
}
