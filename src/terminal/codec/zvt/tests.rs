//! ZVT codec tests: published captures first (each names its source), then properties.
//!
//! Sources of the byte vectors (only the bytes are taken, never code):
//! * `ecrterm` — github.com/wirelane/ecrterm, `ecrterm/tests/test_parsing.py` (a serial capture
//!   of a completion with its CRC, and APDUs from real terminals);
//! * `Portalum.Zvt` — github.com/Portalum/Portalum.Zvt, `src/Portalum.Zvt.UnitTest/`
//!   (`StatusInformationParserTest.cs`, `ApduHelperTest.cs`, `ZvtClientTest.cs`);
//! * the CRC catalogue's check value for CRC-16/KERMIT (reveng.sourceforge.io/crc-catalogue).

use proptest::prelude::*;
use serde_json::Value as Json;

use super::apdu::{Apdu, ApduDecoder, ACK_APDU};
use super::bmp::{self, RawField, Value};
use super::tlv::{self, Tlv, TlvValue};
use super::transport::{
    self, crc, encode_frame, link_reply, Dropped, FrameDecoder, LinkStep, Retransmit, Unit,
};
use super::{decode, Message};

fn bytes(hex: &str) -> Vec<u8> {
    let clean: String = hex.chars().filter(char::is_ascii_hexdigit).collect();
    (0..clean.len()).step_by(2).map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("test hex")).collect()
}

fn units(stream: &[u8], sizes: &[usize]) -> Vec<Unit> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        decoder.push(chunk);
        assert!(decoder.buffered_len() <= transport::MAX_APDU);
        out.extend(std::iter::from_fn(|| decoder.next_unit()));
        rest = tail;
    }
    out
}

fn message(hex: &str) -> Message {
    decode(&Apdu::parse(&bytes(hex)).expect("vector is one APDU"))
}

/// No string anywhere in the decoder's JSON may hold a card number or track data.
fn assert_no_card_data(value: &Json) {
    match value {
        Json::String(text) => {
            assert!(!crate::pan::contains_pan(text), "PAN in decode output: {text}");
            assert!(!crate::pan::looks_like_track_data(text), "track data in decode output");
        }
        Json::Array(items) => items.iter().for_each(assert_no_card_data),
        Json::Object(map) => map.values().for_each(assert_no_card_data),
        Json::Number(_) | Json::Null | Json::Bool(_) => {}
    }
}

#[test]
fn crc_is_the_kermit_variant() {
    // The catalogue's check value covers the bytes "123456789"; ours appends ETX, so strip it by
    // checking the ETX-extended value of the empty APDU too.
    let kermit = |data: &[u8]| {
        data.iter().fold(0u16, |c, &b| {
            (0..8).fold(c ^ u16::from(b), |c, _| if c & 1 == 1 { (c >> 1) ^ 0x8408 } else { c >> 1 })
        })
    };
    assert_eq!(kermit(b"123456789"), 0x2189);
    assert_eq!(crc(b"12345678"), kermit(b"12345678\x03"));
}

#[test]
fn ecrterm_serial_capture_of_a_completion() {
    // ecrterm: test_version_completion, a completion with the software version, as sent.
    let wire = bytes("10 02 06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00 10 03 B1 11");
    let apdu = bytes("06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00");
    assert_eq!(crc(&apdu), 0x11B1);
    assert_eq!(encode_frame(&apdu), wire);
    for sizes in [&[][..], &[1], &[3, 1]] {
        assert_eq!(units(&wire, sizes), [Unit::Frame(apdu.clone())]);
    }
    let msg = message("06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00");
    assert_eq!(msg.name, "completion");
    assert_eq!(msg.prefix[0], ("software_version", Value::Text("2.14.15".into())));
    assert_eq!(msg.prefix_byte("terminal_status"), Some(0x00));
    assert!(msg.fields.is_empty() && msg.unread.is_none());
}

#[test]
fn damaged_frame_is_naked_and_noise_is_not_answered() {
    let mut wire = encode_frame(&[0x06, 0x0F, 0x00]);
    let last = wire.len() - 1;
    wire[last] ^= 0x01;
    let got = units(&wire, &[]);
    assert_eq!(got, [Unit::Dropped(Dropped::BadCrc)]);
    assert_eq!(link_reply(&got[0]), Some(transport::NAK));
    let noise = units(b"\x01\x02\x03\x06\x15", &[]);
    assert_eq!(noise, [Unit::Dropped(Dropped::Garbage), Unit::Ack, Unit::Nak]);
    assert_eq!(link_reply(&noise[0]), None);
    assert_eq!(link_reply(&Unit::Frame(vec![])), Some(transport::ACK));
}

#[test]
fn a_new_frame_start_abandons_the_old_one() {
    let mut wire = vec![0x10, 0x02, 0x06, 0x1E];
    wire.extend(encode_frame(&[0x06, 0x0F, 0x00]));
    assert_eq!(units(&wire, &[]), [Unit::Dropped(Dropped::BadEscape), Unit::Frame(vec![0x06, 0x0F, 0x00])]);
}

#[test]
fn retransmission_stops_after_three_transmissions() {
    let (mut link, first) = Retransmit::start(&ACK_APDU);
    assert_eq!(first, encode_frame(&ACK_APDU));
    assert_eq!(link.on_nak_or_timeout(), LinkStep::Resend(first.clone()));
    assert_eq!(link.on_nak_or_timeout(), LinkStep::Resend(first));
    assert_eq!(link.on_nak_or_timeout(), LinkStep::GiveUp);
    assert_eq!(link.transmissions(), 3);
    assert_eq!(link.on_ack(), LinkStep::Delivered);
}

#[test]
fn portalum_extended_lengths() {
    // Portalum.Zvt ApduHelperTest: FF followed by the length, low byte first.
    let (apdu, used) = Apdu::parse_prefix(&bytes("04 0F FF 01 00 6C")).expect("extended length");
    assert_eq!((apdu.data.as_slice(), used), (&[0x6C][..], 6));
    let short = Apdu::parse_prefix(&bytes("04 0F FF 00 01 6C"));
    assert!(matches!(short, Err(super::ApduError::Truncated { needed: 261, .. })));
    let long = Apdu::new(0x06, 0xD3, vec![0x20; 300]);
    let wire = long.encode().expect("fits");
    assert_eq!(&wire[..5], &[0x06, 0xD3, 0xFF, 0x2C, 0x01]);
    assert_eq!(Apdu::parse(&wire), Ok(long));
}

#[test]
fn portalum_payment_commands() {
    // Portalum.Zvt ZvtClientTest: the authorization sent for 10.00 and for 33.00 with 02 0A.
    let msg = message("06 01 07 04 00 00 00 00 10 00");
    assert_eq!((msg.name, msg.amount()), ("authorization", Some(1000)));
    let msg = message("06 01 09 04 00 00 00 00 33 00 02 0A");
    assert_eq!((msg.amount(), msg.byte(0x02)), (Some(3300), Some(0x0A)));
    assert_eq!(bmp::amount_field(3300), Some(bytes("04 00 00 00 00 33 00")));
    // Portalum.Zvt ZvtClientTest: abort with result code 64 (card not readable).
    assert_eq!(message("06 1E 01 64").prefix_byte("result_code"), Some(0x64));
}

#[test]
fn portalum_status_information_of_a_payment() {
    // Portalum.Zvt StatusInformationParserTest: Parse_PaymentGood1.
    let msg = message(
        "04 0F 77 27 00 04 00 00 00 00 20 40 0B 00 04 70 0C 22 39 53 0D 10 06 0E 25 12 17 00 01 19 70
         22 F0 F8 EE EE EE EE EE EE 47 71 29 28 00 48 69 2A 31 30 30 34 36 31 37 36 33 20 20 20 20 20
         20 3B 36 31 31 38 30 34 00 00 3C F0 F1 F4 47 45 4E 2E 4E 52 2E 3A 36 31 31 38 30 34 49 09 78
         87 04 70 88 00 04 70 8A 2E 8B F1 F7 44 65 62 69 74 20 4D 61 73 74 65 72 63 61 72 64 00",
    );
    assert_eq!(msg.name, "status_information");
    assert!(msg.unread.is_none(), "{:?}", msg.unread);
    assert_eq!(msg.byte(0x27), Some(0x00));
    assert_eq!(msg.amount(), Some(2040));
    assert_eq!(msg.digits(0x0B), Some("000470"));
    assert_eq!(msg.digits(0x0C), Some("223953"));
    assert_eq!(msg.digits(0x29), Some("28004869"));
    assert_eq!(msg.digits(0x49), Some("0978"));
    assert_eq!(msg.digits(0x87), Some("0470"));
    assert_eq!(msg.field(0x0E), Some(&Value::Removed));
    assert_eq!(msg.field(0x3C), Some(&Value::Text("GEN.NR.:611804".into())));
    assert_eq!(msg.field(0x8B), Some(&Value::Text("Debit Mastercard".into())));
    let card = msg.card().expect("masked PAN gives the last 4");
    assert_eq!((card.bin.as_deref(), card.last4.as_str()), (None, "4771"));
}

#[test]
fn portalum_tlv_container_and_abort_by_key() {
    // Portalum.Zvt StatusInformationParserTest: Parse_TlvInfos1 and Parse_AbortByKey.
    let msg = message(
        "04 0F 65 27 00 0C 23 13 55 0D 10 29 0E 99 99 22 F0 F8 EE EE EE EE EE EE 47 71 A0 01 29 00 00 00
         06 87 00 08 0B 00 00 00 8A 06 8B F1 F1 4D 41 53 54 45 52 43 41 52 44 00 06 2E 2F 08 1F 12 01
         02 1F 10 01 00 60 1B 43 07 A0 00 00 00 04 10 10 44 10 44 65 62 69 74 20 4D 61 73 74 65 72 63
         61 72 64 1F 2B 04 10 01 50 08",
    );
    assert!(msg.unread.is_none(), "{:?}", msg.unread);
    assert_eq!(msg.digits(0x29), Some("00000006"));
    let Some(Value::Tlv(items)) = msg.field(0x06) else { panic!("no TLV container") };
    let tags: Vec<u32> = items.iter().map(|i| i.tag).collect();
    assert_eq!(tags, [0x2F, 0x60, 0x1F2B]);
    let abort = message(
        "04 0F 1E 27 6C 29 28 00 48 69 3C F0 F1 F9 41 62 62 72 75 63 68 20 64 75 72 63 68 20 4B 75 6E 64 65",
    );
    assert_eq!(abort.byte(0x27), Some(0x6C));
    assert_eq!(abort.field(0x3C), Some(&Value::Text("Abbruch durch Kunde".into())));
}

#[test]
fn ecrterm_registration_with_tlv_survives_dle_doubling() {
    // ecrterm test_parsing PACKET_LIST: a registration with a TLV list of permitted commands. Its
    // data holds 0x10 bytes, so the serial frame doubles them.
    let apdu = bytes(
        "06 00 63 00 00 00 FE 09 78 03 00 06 59 10 02 16 02 12 01 40 1A 02 10 00 26 28 0A 02 04 0F 0A
         02 06 0F 0A 02 06 1E 0A 02 04 FF 0A 02 06 D8 0A 02 06 DB 0A 02 06 D9 0A 02 06 DA 0A 02 06 DD
         0A 02 06 D3 27 03 14 01 FF 28 10 15 02 44 45 15 02 45 4E 15 02 46 52 15 02 49 54 40 02 C0 00
         1F 04 02 F1 00 1F 05 01 00",
    );
    let wire = encode_frame(&apdu);
    assert!(wire.windows(2).any(|w| w == [0x10, 0x10]));
    assert_eq!(units(&wire, &[2]), [Unit::Frame(apdu.clone())]);
    let msg = decode(&Apdu::parse(&apdu).expect("one APDU"));
    assert_eq!(msg.name, "registration");
    assert_eq!(msg.prefix[0], ("password", Value::Removed));
    assert_eq!(msg.prefix_byte("config_byte"), Some(0xFE));
    assert_eq!(msg.prefix[2], ("currency_code", Value::Digits("0978".into())));
    assert_eq!(msg.byte(0x03), Some(0x00));
    assert!(msg.unread.is_none());
    let raw = bytes("10 02 16 02 26 04 0A 02 06 31");
    let parsed = tlv::parse(&raw).expect("TLV");
    assert_eq!(
        parsed[1],
        Tlv {
            tag: 0x26,
            value: TlvValue::Constructed(vec![Tlv {
                tag: 0x0A,
                value: TlvValue::Primitive(vec![0x06, 0x31])
            }])
        }
    );
    assert_eq!(tlv::encode(&parsed), raw);
}

#[test]
fn ecrterm_status_information_with_a_track_in_the_pan_field() {
    // ecrterm test_parsing PACKET_LIST: BMP 22 carries track-2 style data (PAN, D, expiry).
    let msg = message(
        "04 0F 37 27 00 04 00 00 00 00 40 00 49 09 78 0C 09 38 48 0D 04 25 22 F1 F1 59 66 66 66 66 D2
         00 21 22 01 00 17 00 01 87 01 75 0B 61 39 95 19 40 29 60 09 99 14 0E 05 12 8A 02",
    );
    assert!(msg.unread.is_none());
    let card = msg.card().expect("card");
    assert_eq!((card.bin.as_deref(), card.last4.as_str()), (Some("596666"), "6666"));
    let json = msg.to_json().to_string();
    assert!(!json.contains("5966666666") && !json.contains("D2"), "{json}");
    assert_eq!(msg.amount(), Some(4000));
}

#[test]
fn track_2_and_full_pans_are_reduced() {
    // A full, Luhn-valid test PAN packed as BCD, and the same card as track 2.
    let pan = bytes("22 F0 F8 41 11 11 11 11 11 11 11");
    let track = bytes("23 F1 F5 41 11 11 11 11 11 11 11 D2 51 22 01 12 34 5F");
    let cvv = bytes("3A 01 23");
    let mut data = pan;
    data.extend(track);
    data.extend(cvv);
    let msg = decode(&Apdu::new(0x04, 0x0F, data));
    let cards: Vec<_> = msg
        .fields
        .iter()
        .filter_map(|f| match &f.value {
            Value::Card(c) => Some(c.masked()),
            _ => None,
        })
        .collect();
    assert_eq!(cards, ["411111******1111", "411111******1111"]);
    assert_eq!(msg.field(0x3A), Some(&Value::Removed));
    assert_no_card_data(&msg.to_json());
    // The BCD of 5555 5555 5555 4444 is printable ASCII ("UUUUUUDD"); it is still a PAN, and
    // track 1 is text.
    let printable = decode(&Apdu::new(0x04, 0x0F, bytes("22 F0 F8 55 55 55 55 55 55 44 44")));
    assert_eq!(printable.card().map(crate::sale::CardRef::masked).as_deref(), Some("555555******4444"));
    let mut track1 = vec![0x2D, 0xF3, 0xF3];
    track1.extend_from_slice(b"%B4111111111111111^DOE/JOHN^2512?");
    let track1 = decode(&Apdu::new(0x04, 0x0F, track1));
    assert_eq!(track1.card().map(crate::sale::CardRef::masked).as_deref(), Some("411111******1111"));
    assert_no_card_data(&track1.to_json());
}

#[test]
fn ecrterm_intermediate_status_and_print_line() {
    // ecrterm test_parsing PACKET_LIST: "Bitte Karte einstecken" and a print line.
    let msg = message(
        "04 FF 1E 0A 01 06 1A 24 18 07 16 42 69 74 74 65 20 4B 61 72 74 65 20 65 69 6E 73 74 65 63 6B 65 6E",
    );
    assert_eq!((msg.prefix_byte("status"), msg.prefix_byte("timeout")), (Some(0x0A), Some(0x01)));
    assert_eq!(msg.print_lines(), ["Bitte Karte einstecken"]);
    let line = message("06 D1 17 00 20 20 20 20 20 20 20 20 20 4B 61 73 73 65 6E 73 63 68 6E 69 74 74");
    assert_eq!(line.print_lines(), ["         Kassenschnitt"]);
    let done = message("06 0F 11 19 00 29 52 00 12 33 49 09 78 06 05 27 03 14 01 FF");
    assert_eq!((done.digits(0x29), done.unread.is_none()), (Some("52001233"), true));
}

#[test]
fn unknown_bmp_stops_parsing_and_keeps_the_rest() {
    let msg = decode(&Apdu::new(0x04, 0x0F, bytes("27 00 FE 01 02")));
    assert_eq!(msg.byte(0x27), Some(0));
    let (reason, offset, rest) = msg.unread.expect("unread rest");
    assert_eq!(
        (reason.as_str(), offset, rest),
        ("BMP FE is not in the table; its length is unknown", 2, Value::Hex("FE0102".into()))
    );
}

fn any_field() -> impl Strategy<Value = RawField> {
    (0..bmp::TABLE.len(), prop::collection::vec(any::<u8>(), 0..120)).prop_map(|(i, mut bytes)| {
        let spec = bmp::TABLE[i];
        if let bmp::Format::Fixed(n) = spec.format {
            bytes.resize(n, 0);
        }
        RawField { tag: spec.tag, bytes }
    })
}

fn any_tlv() -> impl Strategy<Value = Tlv> {
    let leaf = (
        prop::sample::select(vec![0x07u32, 0x14, 0x1F10, 0x1F2B, 0x43]),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(tag, bytes)| Tlv { tag, value: TlvValue::Primitive(bytes) });
    leaf.prop_recursive(3, 24, 4, |inner| {
        (prop::sample::select(vec![0x24u32, 0x25, 0x2F, 0x60]), prop::collection::vec(inner, 0..4))
            .prop_map(|(tag, items)| Tlv { tag, value: TlvValue::Constructed(items) })
    })
}

proptest! {
    #[test]
    fn frames_round_trip(apdus in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..5),
                         sizes in prop::collection::vec(1usize..40, 0..8)) {
        let wire: Vec<u8> = apdus.iter().flat_map(|a| encode_frame(a)).collect();
        let expected: Vec<Unit> = apdus.into_iter().map(Unit::Frame).collect();
        prop_assert_eq!(units(&wire, &sizes), expected);
    }

    #[test]
    fn any_serial_bytes_are_bounded(stream in prop::collection::vec(any::<u8>(), 0..4096),
                                    sizes in prop::collection::vec(1usize..64, 0..8)) {
        let got = units(&stream, &sizes);
        prop_assert!(got.len() <= stream.len());
        prop_assert_eq!(got, units(&stream, &[]));
    }

    #[test]
    fn apdus_round_trip_over_tcp(datas in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 1..4),
                                 sizes in prop::collection::vec(1usize..50, 0..8)) {
        let apdus: Vec<Apdu> = datas.into_iter().enumerate().map(|(i, d)| Apdu::new(0x04, i as u8, d)).collect();
        let wire: Vec<u8> = apdus.iter().flat_map(|a| a.encode().expect("fits")).collect();
        let mut decoder = ApduDecoder::new();
        let mut got = Vec::new();
        let mut rest = wire.as_slice();
        let mut cycle = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = cycle.next().unwrap_or(rest.len()).clamp(1, rest.len());
            decoder.push(&rest[..n]);
            rest = &rest[n..];
            got.extend(std::iter::from_fn(|| decoder.next_apdu()));
        }
        prop_assert_eq!(got, apdus.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn bmps_round_trip(fields in prop::collection::vec(any_field(), 0..10)) {
        let fields: Vec<RawField> = fields.into_iter().filter(|f| bmp::encode_raw(f).is_some()).collect();
        let data: Vec<u8> = fields.iter().flat_map(|f| bmp::encode_raw(f).unwrap_or_default()).collect();
        prop_assert_eq!(bmp::parse_raw(&data), (fields, None));
    }

    #[test]
    fn tlv_round_trips(items in prop::collection::vec(any_tlv(), 0..4)) {
        prop_assert_eq!(tlv::parse(&tlv::encode(&items)), Ok(items));
    }

    #[test]
    fn any_apdu_decodes_without_card_data(class in any::<u8>(), instr in any::<u8>(),
                                          data in prop::collection::vec(any::<u8>(), 0..400)) {
        let msg = decode(&Apdu::new(class, instr, data.clone()));
        assert_no_card_data(&msg.to_json());
        let _ = Apdu::parse(&data);
        let _ = tlv::parse(&data);
    }

    #[test]
    fn a_bcd_pan_anywhere_is_never_shown(prefix in prop::collection::vec(any::<u8>(), 0..20), tag in any::<u8>()) {
        // 4111 1111 1111 1111 packed, as a primitive TLV value under any tag, and raw after junk.
        let pan = bytes("41 11 11 11 11 11 11 11");
        let mut container = vec![0x06, 0x0A, tag & !0x20 & 0x1E, 0x08];
        container.extend(&pan);
        let msg = decode(&Apdu::new(0x04, 0x0F, container));
        assert_no_card_data(&msg.to_json());
        let mut junk = prefix;
        junk.extend(&pan);
        assert_no_card_data(&decode(&Apdu::new(0x04, 0x0F, junk)).to_json());
    }
}

#[test]
fn unparsable_bytes_never_show_a_card_number() {
    use super::card::safe_hex;
    // The BCD of a card number inside a longer run of digits, which fails Luhn as a whole.
    let bcd = [0x08, 0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x57, 0x0C];
    let Value::Hex(shown) = safe_hex(&bcd) else { panic!("hex expected") };
    assert!(!shown.contains("41111111") && shown.ends_with("0C"), "{shown}");
    // The same card number as text, which hex would spell out byte by byte.
    assert_eq!(safe_hex(b"CARD 4111111111111111 OK"), Value::Removed);
    // Short runs and plain binary stay readable.
    assert_eq!(safe_hex(&[0x12, 0x34, 0xAB]), Value::Hex("1234AB".into()));
}
