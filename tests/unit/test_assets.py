"""The asset inventory's pure parts: parsers that name each problem's line, impact, severity advice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.analyzer.assets import (
    ASSET_COLUMNS,
    Asset,
    Found,
    Impact,
    Inventory,
    InventoryFileError,
    Unknown,
    User,
    format_of,
    impact,
    one_name_per_system,
    parse_csv,
    parse_yaml,
    resource_names,
    severity_recommendation,
)
from shared.events import Severity

EXAMPLE = Path(__file__).parents[2] / "services" / "analyzer" / "assets.example.yaml"


def problems_of(parse: Any, document: str, source: str) -> list[str]:
    with pytest.raises(InventoryFileError) as caught:
        parse(document, source=source)
    return caught.value.problems


# ---- parsers -----------------------------------------------------------------------------------


def test_the_shipped_example_parses_with_canonical_identifiers() -> None:
    catalog = parse_yaml(EXAMPLE.read_text(), source=str(EXAMPLE))
    kinds = {a.kind for a in catalog.assets}
    assert kinds == {"host", "ip", "cidr", "cloud_resource"}
    assert {u.privilege for u in catalog.users} >= {"standard", "admin", "domain_admin"}
    web = next(a for a in catalog.assets if a.identifier == "web-1")
    assert (web.criticality, web.environment, web.data_classification) == (2, "prod", "confidential")


def test_identifiers_are_made_canonical_per_kind() -> None:
    catalog = parse_yaml(
        """
assets:
  - {kind: host, identifier: "DB-1.Example.COM."}
  - {kind: ip, identifier: "2001:DB8:0:0::1"}
  - {kind: cidr, identifier: "10.1.0.0/16"}
  - {kind: cloud_resource, identifier: "arn:aws:S3:::Bucket"}
users:
  - {name: " Alice ", owns: "payments; storefront", tags: "a,b"}
""",
        source="inv.yaml",
    )
    assert [a.identifier for a in catalog.assets] == [
        "db-1.example.com",
        "2001:db8::1",
        "10.1.0.0/16",
        "arn:aws:S3:::Bucket",
    ]
    assert catalog.users == [User(name="alice", owns=["payments", "storefront"], tags=["a", "b"])]
    assert catalog.assets[0].criticality == 3 and catalog.assets[0].environment == "prod"


def test_yaml_problems_are_each_named_with_their_line() -> None:
    problems = problems_of(
        parse_yaml,
        """assets:
  - kind: ip
    identifier: 10.0.0.300
  - kind: cidr
    identifier: 10.0.0.1/24
  - kind: host
    identifier: web-1
    criticality: 0
    colour: red
  - kind: laptop
    identifier: x
users:
  - name: bob
    privilege: root
""",
        "inv.yaml",
    )
    assert problems[0].startswith("inv.yaml:3:17: assets.0.identifier:") and "not an IP address" in problems[0]
    assert problems[1].startswith("inv.yaml:5:17: assets.1.identifier:") and "host bits set" in problems[1]
    assert problems[2].startswith("inv.yaml:8:18: assets.2.criticality:")
    assert problems[3].startswith("inv.yaml:9:13: assets.2.colour:")
    assert problems[4].startswith("inv.yaml:10:11: assets.3.kind:")
    assert problems[5].startswith("inv.yaml:14:16: users.0.privilege:")
    assert len(problems) == 6


def test_yaml_duplicates_are_refused_with_both_lines() -> None:
    problems = problems_of(
        parse_yaml,
        "assets:\n  - {kind: host, identifier: Web-1}\n  - {kind: host, identifier: web-1.}\n"
        "users:\n  - {name: Eve}\n  - {name: eve}\n",
        "inv.yaml",
    )
    assert problems == [
        "inv.yaml:3: host web-1: given again (first on line 2)",
        "inv.yaml:6: user eve: given again (first on line 5)",
    ]


def test_yaml_that_is_not_yaml_names_its_line() -> None:
    assert problems_of(parse_yaml, "assets:\n  - kind: host\n   identifier: [\n", "bad.yaml")[0].startswith(
        "bad.yaml:3:"
    )


def test_what_no_table_can_store_is_refused_with_its_line() -> None:
    long_name = "h" * 2049
    problems = problems_of(
        parse_yaml,
        f'assets:\n  - {{kind: host, identifier: {long_name}}}\n  - {{kind: host, identifier: "a\\0b"}}\n'
        'users:\n  - {name: "\\ud800"}\n',
        "inv.yaml",
    )
    assert problems[0].startswith("inv.yaml:2:") and "longer than 2048 bytes" in problems[0]
    assert problems[1].startswith("inv.yaml:3:") and "NUL character" in problems[1]
    assert problems[2].startswith("inv.yaml:5:") and "lone surrogate" in problems[2]
    assert problems_of(parse_yaml, "assets:\n  - {kind: host,\x00 identifier: x}\n", "nul.yaml") == [
        "nul.yaml:2: not YAML: character #x0000: special characters are not allowed"
    ]
    [in_csv] = problems_of(parse_csv, "kind,identifier\nhost,web-1\nhost,a\x00b\n", "nul.csv")
    assert in_csv.startswith("nul.csv:3:2: identifier:") and "NUL character" in in_csv


def test_csv_headers_are_mapped_and_lists_split() -> None:
    catalog = parse_csv(
        "Kind,Identifier,Tier,Env,Classification,Service,Owner Team,Tags\n"
        "host,WEB-1,2,Staging,confidential,storefront,web,crown-jewel;pci\n"
        "\n"
        "cidr,10.2.0.0/16,,,,,,\n"
        "ip,10.2.0.9\n",  # spreadsheets leave trailing empty cells out
        source="a.csv",
    )
    assert catalog.assets == [
        Asset(
            kind="host",
            identifier="web-1",
            criticality=2,
            environment="staging",
            data_classification="confidential",
            business_service="storefront",
            owner="web",
            tags=["crown-jewel", "pci"],
        ),
        Asset(kind="cidr", identifier="10.2.0.0/16"),
        Asset(kind="ip", identifier="10.2.0.9"),
    ]
    users = parse_csv("User,Privilege Level,Dept,Owner of\nALICE,domain_admin,IT,payments;hr\n", source="u.csv")
    assert users.users == [User(name="alice", privilege="domain_admin", department="IT", owns=["payments", "hr"])]
    assert users.assets == []


def test_csv_problems_name_line_and_column() -> None:
    problems = problems_of(
        parse_csv,
        'kind,identifier,criticality\nhost,web-1,1\nip,1.2.3,5\n"cidr","10.0.0.0/8",2,extra\n\nhost,WEB-1,2\n'
        'host,"db\n-1",7\n',
        "a.csv",
    )
    assert problems == [
        "a.csv:3:2: identifier: Value error, '1.2.3' is not an IP address (a network is kind cidr)",
        "a.csv:3:3: criticality: Input should be less than or equal to 4",
        "a.csv:4: (row): 4 cells where the header has 3",
        "a.csv:7:3: criticality: Input should be less than or equal to 4",  # a record over two lines: its first
        "a.csv:6: host web-1: given again (first on line 2)",
    ]


def test_csv_headers_must_be_known_and_say_which_table() -> None:
    unknown = problems_of(parse_csv, "kind,identifier,colour\n", "a.csv")
    assert unknown == ["a.csv:1:3: (header): unknown column 'colour'; one of " + ", ".join(ASSET_COLUMNS)]
    assert problems_of(parse_csv, "kind,id,identifier\n", "a.csv") == [
        "a.csv:1:3: (header): column 'identifier' repeats identifier"
    ]
    assert problems_of(parse_csv, "owner,criticality\n", "a.csv")[0].startswith(
        "a.csv:1: (header): needs an identifier"
    )
    assert problems_of(parse_csv, "", "a.csv") == ["a.csv:1: (file): empty, no header"]


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [("inv.yaml", None, "yaml"), ("INV.YML", None, "yaml"), ("inv.csv", None, "csv"), ("inv.txt", "csv", "csv")],
)
def test_the_format_comes_from_the_extension_or_is_given(name: str, given: str | None, expected: str) -> None:
    assert format_of(name, given) == expected


@pytest.mark.parametrize(("name", "given"), [("inv.txt", None), ("inv.yaml", "xml")])
def test_an_unknown_format_is_refused(name: str, given: str | None) -> None:
    with pytest.raises(ValueError, match="format"):
        format_of(name, given)


# ---- impact ------------------------------------------------------------------------------------


def host(name: str, criticality: int = 3, **fields: Any) -> Asset:
    return Asset(kind="host", identifier=name, criticality=criticality, **fields)


def found(*assets: Asset, kind: str = "host") -> tuple[Found, ...]:
    return tuple(Found(kind, a.identifier, a) for a in assets)  # type: ignore[arg-type]


def test_impact_counts_distinct_systems_by_criticality_and_the_highest_data_at_risk() -> None:
    network = Asset(kind="cidr", identifier="10.0.0.0/8", criticality=4, data_classification="public")
    db = host("db-1", 1, business_service="payments", data_classification="restricted")
    web = host("web-1", 2, business_service="storefront", data_classification="confidential")
    inventory = Inventory(
        assets=(
            Found("ip", "10.0.0.1", network, "cidr"),
            Found("ip", "10.0.0.2", network, "cidr"),  # two addresses, one network: one system
            *found(db, web),
            Found("host", "DB-1", db),
        ),
        users=(User(name="alice"), User(name="root", privilege="domain_admin"), User(name="ops", privilege="admin")),
        unknown=(Unknown("host", "mystery"),),
    )
    result = impact(inventory)
    assert result.systems == (db, web, network)
    assert result.blast_radius == 3
    assert result.by_criticality == {1: 1, 2: 1, 3: 0, 4: 1}
    assert result.business_services == ("payments", "storefront")
    assert result.data_at_risk == "restricted"
    assert result.crown_jewels == (db,)
    assert [u.name for u in result.privileged_users] == ["ops", "root"]
    assert [u.name for u in result.users] == ["alice", "ops", "root"]
    assert result.unknown == (Unknown("host", "mystery"),)


def test_an_empty_inventory_weighs_nothing() -> None:
    result = impact(Inventory(unknown=(Unknown("ip", "203.0.113.9"),)))
    assert (result.blast_radius, result.data_at_risk, result.crown_jewels) == (0, None, ())
    assert result.by_criticality == {1: 0, 2: 0, 3: 0, 4: 0}
    assert severity_recommendation(Severity.SEV4, result) is None


def test_a_crown_jewel_tag_counts_whatever_the_criticality() -> None:
    bucket = Asset(kind="cloud_resource", identifier="arn:aws:s3:::exports", criticality=3, tags=["crown-jewel"])
    assert impact(Inventory(assets=found(bucket, kind="resource"))).crown_jewels == (bucket,)


def test_a_cloud_resource_and_a_public_address_of_ours_weigh_as_affected_systems() -> None:
    bucket = Asset(
        kind="cloud_resource", identifier="arn:aws:s3:::exports", criticality=1, data_classification="restricted"
    )
    edge = Asset(kind="cidr", identifier="198.51.100.0/24", criticality=2, business_service="storefront")
    gateway = Asset(kind="ip", identifier="203.0.113.10", criticality=3)
    inventory = Inventory(
        assets=(
            Found("resource", "S3Bucket arn:aws:s3:::exports", bucket),
            Found("ip", "198.51.100.7", edge, "cidr"),
            Found("ip", "198.51.100.8", edge, "cidr"),  # two of our public addresses, one network
            Found("ip", "203.0.113.10", gateway),
        ),
        unknown=(Unknown("resource", "Instance i-0abc"),),
    )
    result = impact(inventory)
    assert result.systems == (bucket, edge, gateway)
    assert result.blast_radius == 3
    assert result.by_criticality == {1: 1, 2: 1, 3: 1, 4: 0}
    assert result.crown_jewels == (bucket,) and result.data_at_risk == "restricted"
    assert result.business_services == ("storefront",)
    assert result.unknown == (Unknown("resource", "Instance i-0abc"),)
    advice = severity_recommendation(Severity.SEV3, result)
    assert advice is not None and advice.severity is Severity.SEV1


def test_unknown_accounts_are_kept_apart_from_the_known() -> None:
    result = impact(
        Inventory(users=(User(name="alice"),), unknown=(Unknown("user", "mallory"), Unknown("host", "ghost-1")))
    )
    assert [u.name for u in result.users] == ["alice"]
    assert [u.value for u in result.unknown if u.kind == "user"] == ["mallory"]


def test_a_system_named_as_host_and_as_resource_is_one_system() -> None:
    instance = Asset(kind="cloud_resource", identifier="i-0abc", criticality=2)
    # Listed as a resource: the host of that name is the same system, not an unknown one.
    listed = one_name_per_system(
        [Found("resource", "Instance i-0abc", instance)], [Unknown("host", "I-0abc"), Unknown("host", "web-9")]
    )
    assert listed == [Unknown("host", "web-9")]
    # Listed as neither: unknown once, by the host's name.
    neither = one_name_per_system(
        [], [Unknown("host", "i-0fff"), Unknown("resource", "Instance i-0fff"), Unknown("resource", "Bucket b")]
    )
    assert neither == [Unknown("host", "i-0fff"), Unknown("resource", "Bucket b")]
    # Listed as a host: the resource naming it is that host.
    web = host("web-1", 2)
    assert one_name_per_system([Found("host", "web-1", web)], [Unknown("resource", "vm web-1")]) == []


def test_a_resource_field_names_a_resource_whole_or_by_each_name_after_its_type() -> None:
    assert resource_names("arn:aws:s3:::exports") == ["arn:aws:s3:::exports"]
    assert resource_names("Instance i-0abc") == ["Instance i-0abc", "i-0abc"]
    assert resource_names("cloud instance i-0abc") == ["cloud instance i-0abc", "i-0abc"]
    assert resource_names("S3Bucket logs, exports") == ["S3Bucket logs, exports", "S3Bucket logs", "logs", "exports"]
    assert resource_names("AWS::IAM::Role arn:aws:iam::123456789012:role/x") == [
        "AWS::IAM::Role arn:aws:iam::123456789012:role/x",
        "arn:aws:iam::123456789012:role/x",
    ]
    assert resource_names(" ") == []
    assert resource_names("x" * 3000) == []  # longer than any listed id


# ---- severity recommendation --------------------------------------------------------------------


def weigh(*assets: Asset, users: tuple[User, ...] = ()) -> Impact:
    return impact(Inventory(assets=found(*assets), users=users))


def test_a_criticality_1_database_with_restricted_data_on_a_sev3_calls_for_sev1() -> None:
    db = host("db-payments-1", 1, business_service="payments", data_classification="restricted")
    advice = severity_recommendation(Severity.SEV3, weigh(db))
    assert advice is not None
    assert advice.current is Severity.SEV3 and advice.severity is Severity.SEV1
    assert advice.reasons == ("crown jewel holding restricted data affected: db-payments-1 (payments)",)


def test_a_crown_jewel_without_restricted_data_calls_for_sev2() -> None:
    advice = severity_recommendation(Severity.SEV3, weigh(host("db-1", 1)))
    assert advice is not None and advice.severity is Severity.SEV2
    assert advice.reasons == ("crown jewel affected: db-1",)


def test_a_domain_admin_calls_for_sev1_and_an_admin_for_sev2() -> None:
    advice = severity_recommendation(
        Severity.SEV3,
        weigh(users=(User(name="svc-backup", privilege="domain_admin"), User(name="ops", privilege="admin"))),
    )
    assert advice is not None and advice.severity is Severity.SEV1
    assert advice.reasons == ("domain admin account affected: svc-backup", "admin account affected: ops")
    only_admin = severity_recommendation(Severity.SEV4, weigh(users=(User(name="ops", privilege="admin"),)))
    assert only_admin is not None and only_admin.severity is Severity.SEV2


def test_the_advice_is_never_less_urgent_than_the_current_severity() -> None:
    db = host("db-1", 1, data_classification="restricted")
    assert severity_recommendation(Severity.SEV1, weigh(db)) is None
    # SEV2 already: only the rules that ask for more than SEV2 are given as reasons
    advice = severity_recommendation(
        Severity.SEV2, weigh(db, host("db-2", 1), users=(User(name="ops", privilege="admin"),))
    )
    assert advice is not None and advice.severity is Severity.SEV1
    assert advice.reasons == ("crown jewel holding restricted data affected: db-1",)


def test_restricted_data_a_wide_blast_radius_and_notable_systems() -> None:
    restricted = severity_recommendation(Severity.SEV4, weigh(host("files-1", 3, data_classification="restricted")))
    assert restricted is not None and restricted.severity is Severity.SEV2
    assert restricted.reasons == ("restricted data at risk on files-1",)

    many = [host(f"web-{n}", 4) for n in range(12)]
    wide = severity_recommendation(Severity.SEV3, weigh(*many))
    assert wide is not None and wide.severity is Severity.SEV2
    assert wide.reasons == ("12 systems affected (from 10 on: SEV2)",)

    notable = severity_recommendation(Severity.SEV4, weigh(host("api-1", 2), host("dev-1", 2, environment="dev")))
    assert notable is not None and notable.severity is Severity.SEV3
    assert notable.reasons == ("criticality-2 production or confidential systems affected: api-1",)
    assert severity_recommendation(Severity.SEV4, weigh(host("dev-1", 2, environment="dev"), host("x", 4))) is None


def test_reasons_name_at_most_five_systems() -> None:
    jewels = [host(f"db-{n}", 1) for n in range(7)]
    advice = severity_recommendation(Severity.SEV4, weigh(*jewels))
    assert advice is not None
    assert advice.reasons[0] == "crown jewel affected: db-0, db-1, db-2, db-3, db-4 and 2 more"
