//! Raw bytes at every method of every server: random bytes, truncated
//! encodings, wrong wire types, huge varints, invalid UTF-8, bad tags,
//! garbage in nested messages, oversize messages and broken gRPC frames.
//! No answer may be INTERNAL or UNKNOWN (INTERNAL is for the mesh's bugs), a
//! request that does not decode must be INVALID_ARGUMENT with an `ErrorInfo`
//! naming the malformed request, every server must still serve afterwards,
//! and no database may change.
//!
//! The methods are not listed here: each server is asked through its own
//! reflection for the services it describes and their descriptors, and a
//! service counts as hosted unless a probe answers UNIMPLEMENTED. So a new
//! method or service is fuzzed without touching this file.
//!
//! Why nothing sent can change state: every protobuf payload sent to a mesh
//! method (health included) is first checked with
//! `commerce_proto::codec::decodes_as`, which decodes it with the very prost
//! type the server's codec uses, and is sent only if it does not decode;
//! a generator that produced decodable bytes retries, and finally falls back
//! to a payload starting with field number 0, which never decodes. So no
//! request reaches a handler: there is no "random but valid" request that
//! could, say, charge points or purge barriers. The framing cases break the
//! gRPC frame itself (their payloads do not decode either), and an oversize
//! message is refused from its frame header. Only reflection's requests are
//! not checked (this crate has no types for them): reflection holds no state.
//! The database fingerprints before and after prove it.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use commerce_proto::codec::{self, MALFORMED_REQUEST};
use commerce_proto::order::v1::OrderState;
use commerce_proto::prost::Message;
use commerce_proto::prost::bytes::{Buf, BufMut};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Unsigned};
use diesel_async::RunQueryDsl;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{Mesh, Node};
use crate::shop;

/// Seed of the case generator; `COMMERCE_FUZZ_SEED` replays another run.
const DEFAULT_SEED: u64 = 0x5eed_f022_2024_0007;
/// Deadline of one call: nothing sent may keep a server busy.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The servers' largest request message (tonic's default, which the mesh
/// keeps).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Both reflection versions a server may serve (grpcurl 1.8 asks v1alpha);
/// each describes the services it was given.
const REFLECTIONS: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
const REFLECTION_PREFIX: &str = "grpc.reflection.";

#[tokio::test]
async fn raw_bytes_at_every_method_never_answer_internal_nor_change_state() {
    let started = Instant::now();
    assert_eq!(
        codec::ERROR_DOMAIN,
        commerce_platform::error::ERROR_DOMAIN,
        "the codec's ErrorInfo domain is the mesh's"
    );
    let seed = std::env::var("COMMERCE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mesh = Mesh::start(1).await;
    seed_shop(&mesh).await;
    let before = quiet_fingerprint(&mesh).await;

    let servers: Vec<&Node> = [&mesh.product, &mesh.point, &mesh.coupon]
        .into_iter()
        .chain(mesh.orchestrators.iter())
        .collect();
    let mut report = Report::default();
    let mut hosted_services = BTreeSet::new();
    for node in &servers {
        let targets = discover(node).await;
        assert!(
            targets.iter().any(|t| !t.path.contains(REFLECTION_PREFIX)),
            "{} hosts no service besides reflection",
            node.service
        );
        for target in &targets {
            hosted_services.insert(target.service.clone());
            fuzz_method(node, target, seed, &mut report).await;
        }
    }
    let generated: BTreeSet<String> = codec::METHODS
        .iter()
        .map(|m| m.path[1..].split('/').next().unwrap().to_owned())
        .collect();
    let missed: Vec<_> = generated.difference(&hosted_services).collect();
    assert!(missed.is_empty(), "services no server hosts: {missed:?}");

    println!(
        "fuzz: seed {seed:#x}, {} methods on {} servers, {} calls ({} fallbacks to field 0)",
        report.methods,
        servers.len(),
        report.calls,
        report.fallbacks
    );
    for ((kind, code), count) in &report.tally {
        println!("  {kind:<26} {code}: {count}");
    }

    for node in &servers {
        assert_alive_and_serving(node).await;
    }
    let after = fingerprint(&mesh).await;
    for (db, tables) in &before {
        assert_eq!(
            tables, &after[db],
            "the {db} database changed under requests that do not decode"
        );
    }
    assert!(
        report.violations.is_empty(),
        "{} answers broke the rules (seed {seed:#x}), the first ones:\n{}",
        report.violations.len(),
        report.violations[..report.violations.len().min(40)].join("\n")
    );
    println!("fuzz: done in {:?}", started.elapsed());
    mesh.shutdown().await;
}

/// A little of everything in every database: a confirmed order with a
/// coupon (barriers, ledger, reservations, saga log) and a rejected one.
async fn seed_shop(mesh: &Mesh) {
    let brand = shop::brand(mesh, "Fuzz").await;
    let shoe = shop::product(mesh, brand, "Shoe", 12_000, 10).await;
    shop::charge(mesh, "alice", 50_000).await;
    let template = shop::fixed_template(mesh, 3_000, 10_000, 10, false).await;
    let coupon = shop::issue(mesh, template, "alice").await;
    let confirmed = shop::place(mesh, "alice", &[(shoe, 1)], Some(coupon)).await;
    assert_eq!(
        shop::state(&confirmed),
        OrderState::Confirmed,
        "{confirmed:?}"
    );
    // Bob has no points.
    let rejected = shop::place(mesh, "bob", &[(shoe, 1)], None).await;
    assert_eq!(shop::state(&rejected), OrderState::Rejected, "{rejected:?}");
}

// ---------------------------------------------------------------------------
// Discovery through each server's reflection

/// One method of a hosted service, with its request's descriptor.
struct Target {
    service: String,
    path: String,
    input_name: String,
    input: DescriptorProto,
}

async fn discover(node: &Node) -> Vec<Target> {
    // Each service with the files its reflection describes it with.
    let mut described: BTreeMap<String, Vec<FileDescriptorProto>> = BTreeMap::new();
    for reflection in REFLECTIONS {
        // ServerReflectionRequest { list_services: "" }
        let Some(list) = reflect(node, reflection, ld(7, b"")).await else {
            continue;
        };
        let services: Vec<String> = fields(&field_bytes(&list, 6).expect("list_services_response"))
            .into_iter()
            .filter(|(n, _)| *n == 1)
            .filter_map(|(_, v)| v.bytes())
            .map(|service| {
                String::from_utf8(field_bytes(&service, 1).unwrap_or_default()).expect("a name")
            })
            .collect();
        assert!(services.iter().any(|s| s == reflection), "{services:?}");
        for service in services {
            if described.contains_key(&service) {
                continue;
            }
            // ServerReflectionRequest { file_containing_symbol: service }
            let response = reflect(node, reflection, ld(4, service.as_bytes()))
                .await
                .expect("reflection answered a moment ago");
            let files = fields(&field_bytes(&response, 4).expect("file_descriptor_response"))
                .into_iter()
                .filter(|(n, _)| *n == 1)
                .filter_map(|(_, v)| v.bytes())
                .map(|b| FileDescriptorProto::decode(&b[..]).expect("a file descriptor"))
                .collect();
            described.insert(service, files);
        }
    }
    assert!(
        described.contains_key(REFLECTIONS[0]),
        "{} serves no reflection v1",
        node.service
    );

    let mut targets = Vec::new();
    for (service, files) in &described {
        let descriptor = files
            .iter()
            .find_map(|f| {
                f.service
                    .iter()
                    .find(|s| &format!("{}.{}", f.package(), s.name()) == service)
            })
            .unwrap_or_else(|| panic!("no descriptor for {service}"));
        let hosted = {
            let first = &descriptor.method[0];
            let path = format!("/{service}/{}", first.name());
            // Field number 0: no message decodes, so this changes nothing.
            let outcome = call(node, &path, vec![vec![0x00]]).await;
            !matches!(&outcome, Err(s) if s.code() == Code::Unimplemented)
        };
        if !hosted {
            continue;
        }
        for method in &descriptor.method {
            let input_name = method.input_type().trim_start_matches('.').to_owned();
            let (package, message) = input_name.rsplit_once('.').expect("qualified");
            let input = files
                .iter()
                .filter(|f| f.package() == package)
                .flat_map(|f| &f.message_type)
                .find(|m| m.name() == message)
                .unwrap_or_else(|| panic!("no descriptor for {input_name}"))
                .clone();
            targets.push(Target {
                service: service.clone(),
                path: format!("/{service}/{}", method.name()),
                input_name,
                input,
            });
        }
    }
    targets
}

/// One exchange with a reflection service; the `ServerReflectionResponse`,
/// or `None` if the server does not serve that version.
async fn reflect(node: &Node, reflection: &str, request: Vec<u8>) -> Option<Vec<u8>> {
    let path = format!("/{reflection}/ServerReflectionInfo");
    match call(node, &path, vec![request]).await {
        Ok(mut responses) => {
            assert_eq!(responses.len(), 1);
            Some(responses.remove(0))
        }
        Err(status) if status.code() == Code::Unimplemented => None,
        Err(status) => panic!("{reflection} on {}: {status:?}", node.service),
    }
}

// ---------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Random,
    RandomTail,
    Truncated,
    WrongWireType,
    HugeVarint,
    BadUtf8,
    BadTag,
    NestedGarbage,
    Oversize,
    FrameEmpty,
    FramePartialHeader,
    FrameShortPayload,
    FrameBadFlag,
    FrameCompressedNoEncoding,
    FrameTwoMessages,
    FrameDeclaredTooLarge,
    FrameUnknownEncoding,
}

/// Per method: 39 protobuf payloads, one oversize message, 8 framings.
const PAYLOAD_CASES: &[(Kind, usize)] = &[
    (Kind::Random, 8),
    (Kind::RandomTail, 4),
    (Kind::Truncated, 6),
    (Kind::WrongWireType, 6),
    (Kind::HugeVarint, 4),
    (Kind::BadUtf8, 4),
    (Kind::BadTag, 4),
    (Kind::NestedGarbage, 3),
];

/// Bodies that break the gRPC framing, with the status a single-message
/// method owes them. Strings, as the body type at hand is a `String`; every
/// byte here is ASCII.
fn framings() -> Vec<(Kind, &'static str, Option<&'static str>, Code)> {
    vec![
        (Kind::FrameEmpty, "", None, Code::InvalidArgument),
        (
            Kind::FramePartialHeader,
            "\0\0\0",
            None,
            Code::InvalidArgument,
        ),
        // Declares 64 bytes, carries 10.
        (
            Kind::FrameShortPayload,
            "\0\0\0\0\x40\0abcdefghi",
            None,
            Code::InvalidArgument,
        ),
        (
            Kind::FrameBadFlag,
            "\x02\0\0\0\x01\0",
            None,
            Code::InvalidArgument,
        ),
        (
            Kind::FrameCompressedNoEncoding,
            "\x01\0\0\0\x01\0",
            None,
            Code::InvalidArgument,
        ),
        (
            Kind::FrameTwoMessages,
            "\0\0\0\0\x01\0\0\0\0\0\x01\0",
            None,
            Code::InvalidArgument,
        ),
        // Declares about 2 GiB: refused from the header, by tonic.
        (
            Kind::FrameDeclaredTooLarge,
            "\0\x7f\x7f\x7f\x7fabc",
            None,
            Code::OutOfRange,
        ),
        (
            Kind::FrameUnknownEncoding,
            "\x01\0\0\0\x01\0",
            Some("gzip"),
            Code::Unimplemented,
        ),
    ]
}

#[derive(Default)]
struct Report {
    methods: usize,
    calls: usize,
    fallbacks: usize,
    tally: BTreeMap<(String, String), usize>,
    violations: Vec<String>,
}

impl Report {
    fn record(&mut self, target: &Target, kind: Kind, outcome: &Result<(), Status>, owed: Owed) {
        self.calls += 1;
        let status = match outcome {
            Ok(()) => Status::new(Code::Ok, ""),
            Err(status) => status.clone(),
        };
        *self
            .tally
            .entry((format!("{kind:?}"), format!("{:?}", status.code())))
            .or_default() += 1;
        let problem = if matches!(status.code(), Code::Internal | Code::Unknown) {
            Some("INTERNAL/UNKNOWN".to_owned())
        } else {
            match owed {
                Owed::AnythingButInternal => None,
                Owed::Code(code) if status.code() != code => Some(format!("expected {code:?}")),
                Owed::Code(_) => None,
                Owed::Malformed => malformed_problem(&status, target),
            }
        };
        if let Some(problem) = problem {
            self.violations.push(format!(
                "{} {kind:?}: {problem}, got {:?} {:?}",
                target.path,
                status.code(),
                status.message()
            ));
        }
    }
}

/// What an answer must be.
#[derive(Debug, Clone, Copy)]
enum Owed {
    /// INVALID_ARGUMENT with `ErrorInfo` reason MALFORMED_REQUEST in the
    /// mesh's domain.
    Malformed,
    Code(Code),
    /// Reflection: it ends its stream on a request it cannot read.
    AnythingButInternal,
}

fn malformed_problem(status: &Status, target: &Target) -> Option<String> {
    if status.code() != Code::InvalidArgument {
        return Some("expected INVALID_ARGUMENT".to_owned());
    }
    match error_info(status) {
        Some((reason, domain))
            if reason == MALFORMED_REQUEST && domain == commerce_platform::error::ERROR_DOMAIN => {}
        other => {
            return Some(format!(
                "expected ErrorInfo MALFORMED_REQUEST, got {other:?}"
            ));
        }
    }
    let names_it =
        status.message().contains(&target.input_name) || status.message().contains(&target.path);
    (!names_it).then(|| "the message names neither the type nor the method".to_owned())
}

async fn fuzz_method(node: &Node, target: &Target, seed: u64, report: &mut Report) {
    report.methods += 1;
    let mut rng = Rng::new(seed ^ fnv(&target.path));
    let checked = codec::decodes_as(&target.input_name, &[]).is_some();
    let reflection = target.path.contains(REFLECTION_PREFIX);
    assert!(
        checked || reflection,
        "{}: its request type is not in commerce-proto's codec table, so this test cannot \
         prove its payloads do not decode",
        target.path
    );
    let owe = |owed: Owed| {
        if reflection {
            Owed::AnythingButInternal
        } else {
            owed
        }
    };

    for &(kind, count) in PAYLOAD_CASES {
        for _ in 0..count {
            let mut payload = Vec::new();
            let mut undecodable = false;
            for _ in 0..32 {
                payload = generate(kind, &target.input, &mut rng);
                if !checked || codec::decodes_as(&target.input_name, &payload) == Some(false) {
                    undecodable = true;
                    break;
                }
            }
            if !undecodable {
                report.fallbacks += 1;
                payload.insert(0, 0x00);
                assert_eq!(codec::decodes_as(&target.input_name, &payload), Some(false));
            }
            let outcome = call(node, &target.path, vec![payload]).await.map(drop);
            report.record(target, kind, &outcome, owe(Owed::Malformed));
        }
    }

    // Above the limit: refused from the frame header.
    let oversize = rng.bytes(MAX_MESSAGE + 1);
    let outcome = call(node, &target.path, vec![oversize]).await.map(drop);
    report.record(
        target,
        Kind::Oversize,
        &outcome,
        owe(Owed::Code(Code::OutOfRange)),
    );

    for (kind, body, encoding, code) in framings() {
        let outcome = call_raw(node, &target.path, encoding, body).await;
        let owed = if code == Code::InvalidArgument {
            Owed::Malformed
        } else {
            Owed::Code(code)
        };
        report.record(target, kind, &outcome, owe(owed));
    }
}

fn generate(kind: Kind, message: &DescriptorProto, rng: &mut Rng) -> Vec<u8> {
    let fields = &message.field;
    let pick = |rng: &mut Rng, wanted: &dyn Fn(&FieldDescriptorProto) -> bool| {
        let matching: Vec<&FieldDescriptorProto> = fields.iter().filter(|f| wanted(f)).collect();
        (!matching.is_empty()).then(|| matching[rng.below(matching.len())])
    };
    let mut out = Vec::new();
    match kind {
        Kind::Random => out = rng.some_bytes(1, 64),
        Kind::RandomTail => {
            out = plausible(message, rng);
            out.extend(rng.some_bytes(1, 16));
        }
        Kind::Truncated => {
            let whole = plausible(message, rng);
            if whole.len() < 2 {
                return rng.some_bytes(1, 8);
            }
            out = whole[..1 + rng.below(whole.len() - 1)].to_vec();
        }
        Kind::WrongWireType => {
            let Some(field) = pick(rng, &|_| true) else {
                return rng.some_bytes(1, 32);
            };
            let right = wire_type(field.r#type());
            let wrong: Vec<u8> = [0, 1, 2, 5].into_iter().filter(|w| *w != right).collect();
            let wire = wrong[rng.below(wrong.len())];
            out = plausible(message, rng);
            key(&mut out, field.number(), wire);
            match wire {
                0 => varint(&mut out, rng.next()),
                1 => out.extend(rng.bytes(8)),
                5 => out.extend(rng.bytes(4)),
                _ => {
                    let body = rng.some_bytes(0, 12);
                    varint(&mut out, body.len() as u64);
                    out.extend(body);
                }
            }
        }
        Kind::HugeVarint => {
            let field = pick(rng, &|_| true);
            let number = field.map_or(1, FieldDescriptorProto::number);
            match rng.below(4) {
                // 11 bytes: longer than any varint.
                0 => {
                    key(&mut out, number, 0);
                    out.extend([0xff; 10]);
                    out.push(0x01);
                }
                // 10 bytes whose last carries more than 64 bits.
                1 => {
                    key(&mut out, number, 0);
                    out.extend([0xff; 9]);
                    out.push(0x7f);
                }
                // A length far beyond the message.
                2 => {
                    key(&mut out, number, 2);
                    varint(&mut out, u64::MAX >> rng.below(40));
                    out.extend(rng.some_bytes(0, 8));
                }
                // A key that never ends.
                _ => out.extend([0x80; 12]),
            }
        }
        Kind::BadUtf8 => {
            let Some(field) = pick(rng, &|f| f.r#type() == Type::String) else {
                return rng.some_bytes(1, 32);
            };
            const INVALID: &[&[u8]] = &[
                &[0xff],
                &[0xc3, 0x28],
                &[0xed, 0xa0, 0x80],
                &[0xf8, 0x88, 0x80, 0x80, 0x80],
                &[0xe2, 0x82],
            ];
            let mut text = b"user-".to_vec();
            text.extend(INVALID[rng.below(INVALID.len())]);
            text.extend(b"-1");
            out = plausible(message, rng);
            key(&mut out, field.number(), 2);
            varint(&mut out, text.len() as u64);
            out.extend(text);
        }
        Kind::BadTag => {
            let number = pick(rng, &|_| true).map_or(1, FieldDescriptorProto::number);
            out = plausible(message, rng);
            match rng.below(5) {
                // Field number 0.
                0 => out.push(0x00),
                // Wire types 6 and 7 do not exist.
                1 => key(&mut out, number, 6),
                2 => key(&mut out, number, 7),
                // A group that is never closed.
                3 => key(&mut out, number, 3),
                // A field number above 2^29 - 1.
                _ => varint(&mut out, (1u64 << 32) | 2),
            }
            out.extend(rng.some_bytes(0, 4));
        }
        Kind::NestedGarbage => {
            let Some(field) = pick(rng, &|f| f.r#type() == Type::Message) else {
                return rng.some_bytes(1, 32);
            };
            let garbage = rng.some_bytes(1, 24);
            out = plausible(message, rng);
            key(&mut out, field.number(), 2);
            varint(&mut out, garbage.len() as u64);
            out.extend(garbage);
        }
        _ => unreachable!("not a payload case: {kind:?}"),
    }
    out
}

/// A well-typed encoding of some of `message`'s fields: strings long enough
/// for a truncation to land inside one.
fn plausible(message: &DescriptorProto, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for field in &message.field {
        if rng.below(3) == 0 {
            continue;
        }
        let repeats = if field.label() == Label::Repeated {
            1 + rng.below(2)
        } else {
            1
        };
        for _ in 0..repeats {
            let wire = wire_type(field.r#type());
            key(&mut out, field.number(), wire);
            match (wire, field.r#type()) {
                (0, _) => varint(&mut out, rng.below(1000) as u64),
                (1, _) => out.extend(rng.bytes(8)),
                (5, _) => out.extend(rng.bytes(4)),
                (_, Type::String) => {
                    let text: Vec<u8> = (0..8 + rng.below(24))
                        .map(|_| b'a' + (rng.below(26) as u8))
                        .collect();
                    varint(&mut out, text.len() as u64);
                    out.extend(text);
                }
                // Bytes, or an empty nested message.
                _ => {
                    let body = if field.r#type() == Type::Bytes {
                        rng.some_bytes(0, 16)
                    } else {
                        Vec::new()
                    };
                    varint(&mut out, body.len() as u64);
                    out.extend(body);
                }
            }
        }
    }
    out
}

fn wire_type(ty: Type) -> u8 {
    match ty {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
        Type::String | Type::Bytes | Type::Message => 2,
        Type::Group => 3,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Protobuf by hand

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, number: i32, wire: u8) {
    varint(out, (u64::try_from(number).unwrap() << 3) | u64::from(wire));
}

/// A length-delimited field.
fn ld(number: i32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, number, 2);
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

enum Value {
    Varint,
    Bytes(Vec<u8>),
    Fixed,
}

impl Value {
    fn bytes(self) -> Option<Vec<u8>> {
        match self {
            Self::Bytes(b) => Some(b),
            Self::Varint | Self::Fixed => None,
        }
    }
}

fn read_varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = buf[0];
        *buf = &buf[1..];
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    value
}

/// The fields of a well-formed message the servers sent (reflection, status
/// details).
fn fields(mut buf: &[u8]) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf);
        let value = match key & 7 {
            0 => {
                read_varint(&mut buf);
                Value::Varint
            }
            1 => {
                buf = &buf[8..];
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(read_varint(&mut buf)).unwrap();
                let (value, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(value.to_vec())
            }
            5 => {
                buf = &buf[4..];
                Value::Fixed
            }
            other => panic!("wire type {other} in a server's message"),
        };
        out.push((key >> 3, value));
    }
    out
}

fn field_bytes(message: &[u8], number: u64) -> Option<Vec<u8>> {
    fields(message)
        .into_iter()
        .find(|(n, _)| *n == number)
        .and_then(|(_, v)| v.bytes())
}

/// `(reason, domain)` of the `google.rpc.ErrorInfo` in a status's details.
fn error_info(status: &Status) -> Option<(String, String)> {
    // google.rpc.Status { repeated Any details = 3 }, Any { type_url = 1, value = 2 }
    fields(status.details())
        .into_iter()
        .filter(|(n, _)| *n == 3)
        .filter_map(|(_, v)| v.bytes())
        .find(|any| {
            field_bytes(any, 1).as_deref() == Some(b"type.googleapis.com/google.rpc.ErrorInfo")
        })
        .and_then(|any| field_bytes(&any, 2))
        .map(|info| {
            let text = |n| String::from_utf8(field_bytes(&info, n).unwrap_or_default()).unwrap();
            (text(1), text(2))
        })
}

// ---------------------------------------------------------------------------
// Raw calls

/// Passes message bytes through as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends `messages` (each framed by tonic) on a stream to `path` and reads
/// every response message and the final status.
async fn call(node: &Node, path: &str, messages: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Status> {
    let exchange = async {
        // TestChannel calls each method as an identity the policy allows:
        // the fuzzing must reach the handlers, not stop at authorization.
        let mut grpc = tonic::client::Grpc::new(node.channel());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("client: channel not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_str(path).expect("a path");
        let request = tonic::Request::new(futures::stream::iter(messages));
        let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
        let mut responses = Vec::new();
        while let Some(message) = stream.message().await? {
            responses.push(message);
        }
        Ok(responses)
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("client: no answer in time")))
}

/// Sends `body` as it is, frames and all. A `String` body, as the test
/// crate has no other request body type; the framings are all ASCII.
async fn call_raw(
    node: &Node,
    path: &str,
    encoding: Option<&str>,
    body: &'static str,
) -> Result<(), Status> {
    let exchange = async {
        // As an identity the policy allows: the fuzzing must reach the handlers.
        let mut channel = node.channel();
        futures::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx))
            .await
            .map_err(|e| Status::unavailable(format!("client: channel not ready: {e}")))?;
        let mut request = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request
            .body(tonic::body::Body::new(body.to_owned()))
            .expect("a request");
        let response = channel
            .call(request)
            .await
            .map_err(|e| Status::unavailable(format!("client: transport: {e}")))?;
        // A trailers-only answer carries its status in the headers.
        if let Some(status) = Status::from_header_map(response.headers()) {
            return if status.code() == Code::Ok {
                Ok(())
            } else {
                Err(status)
            };
        }
        let code = response.status();
        let mut stream =
            tonic::codec::Streaming::new_response(RawCodec, response.into_body(), code, None, None);
        while stream.message().await?.is_some() {}
        Ok(())
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("client: no answer in time")))
}

async fn assert_alive_and_serving(node: &Node) {
    let pid = node.pid().expect("the process was started");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (name) state ...`: Z is a process that exited and is not reaped.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    assert!(
        state.is_some_and(|s| !s.starts_with('Z')),
        "{} (pid {pid}) is gone: {stat:?}",
        node.service
    );
    let status = HealthClient::new(node.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("{} health: {s:?}", node.service))
        .into_inner()
        .status;
    assert_eq!(
        status,
        ServingStatus::Serving as i32,
        "{} not serving",
        node.service
    );
}

// ---------------------------------------------------------------------------
// Database fingerprints

type Fingerprint = BTreeMap<String, BTreeMap<String, (i64, Option<u64>)>>;

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct TableChecksum {
    #[diesel(sql_type = Nullable<Unsigned<BigInt>>, column_name = "Checksum")]
    checksum: Option<u64>,
}

#[derive(QueryableByName)]
struct RowCount {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Row count and `CHECKSUM TABLE` of every table of every server's database.
async fn fingerprint(mesh: &Mesh) -> Fingerprint {
    let mut all = Fingerprint::new();
    for service in ["product", "point", "coupon", "order"] {
        let mut conn = mesh.database(service).connect().await.unwrap();
        let tables: Vec<TableName> = diesel::sql_query(
            "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables \
             WHERE table_schema = DATABASE() ORDER BY table_name",
        )
        .load(&mut conn)
        .await
        .unwrap();
        assert!(!tables.is_empty(), "{service} has no tables");
        let mut prints = BTreeMap::new();
        for TableName { name } in tables {
            let count: Vec<RowCount> =
                diesel::sql_query(format!("SELECT COUNT(*) AS n FROM `{name}`"))
                    .load(&mut conn)
                    .await
                    .unwrap();
            let checksum: Vec<TableChecksum> =
                diesel::sql_query(format!("CHECKSUM TABLE `{name}`"))
                    .load(&mut conn)
                    .await
                    .unwrap();
            prints.insert(name, (count[0].n, checksum[0].checksum));
        }
        all.insert(service.to_owned(), prints);
    }
    all
}

/// The fingerprint once the seeded sagas have settled and nothing moves.
async fn quiet_fingerprint(mesh: &Mesh) -> Fingerprint {
    let mut last = fingerprint(mesh).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = fingerprint(mesh).await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the databases keep changing with no request: {last:?}");
}

// ---------------------------------------------------------------------------
// A seeded generator (xorshift64*), so a failing run can be replayed.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `min` to `min + spread - 1` bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend(self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// FNV-1a, to give every method its own stream of cases.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
