"""Storage URIs: what is accepted, and the message for what is not (pure strings, no store)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpujob.storage import BadURI, StorageURI, is_uri, looks_like_uri, missing_credentials, parse_uri, uri_problem


@pytest.mark.parametrize(("text", "uri"), [
    ("s3://bkt/a/b", StorageURI("s3", "bkt", "a/b")),
    ("s3://bkt", StorageURI("s3", "bkt", "")),
    ("s3://bkt/a/", StorageURI("s3", "bkt", "a")),
    ("gs://my_bucket.example/x", StorageURI("gs", "my_bucket.example", "x")),
    ("az://container/p/q", StorageURI("az", "container", "p/q")),
    ("abfs://cont@acct01.dfs.core.windows.net/p", StorageURI("abfs", "cont", "p", "acct01")),
])
def test_parses(text, uri):
    assert parse_uri(text) == uri
    assert str(parse_uri(str(uri))) == str(uri)


@pytest.mark.parametrize(("text", "says"), [
    ("s3a://bkt/x", 'did you mean "s3://bkt/x"'),
    ("S3://bkt/x", 'did you mean "s3://bkt/x"'),
    ("s3:/bkt/x", 'did you mean "s3://bkt/x"'),
    ("s3:///bkt/x", 'did you mean "s3://bkt/x"'),
    ("gcs://bkt/x", 'did you mean "gs://bkt/x"'),
    ("abfss://cont/x", 'did you mean "abfs://cont/x"'),
    ("ftp://host/x", "unknown storage scheme ftp://"),
    ("s3://Bucket/x", "did you mean 'bucket'"),
    ("s3://ab/x", "3 to 63 characters"),
    ("s3://bk_t/x", "cannot have: _"),
    ("s3://-bkt/x", "begin and end with a letter or digit"),
    ("s3://192.168.1.1/x", "cannot be an IP address"),
    ("az://a--b/x", "two hyphens"),
    ("s3://bkt/a//b", 'did you mean "s3://bkt/a/b"'),
    ("s3://bkt/../x", '".." are not object names'),
    ("s3:///", "bucket name is missing"),
])
def test_bad_uris_say_what_to_write(text, says):
    with pytest.raises(BadURI) as err:
        parse_uri(text)
    assert says in str(err.value)
    assert uri_problem(text) == str(err.value)


def test_paths_and_hub_ids_are_not_uris():
    for value in ("openai/whisper-small", "data/cv/", "./x", "C:/data", "/abs/path"):
        assert not looks_like_uri(value) and not is_uri(value)
    assert looks_like_uri("s3a://x/y") and not is_uri("s3a://x/y") and is_uri("s3://x/y")


BUCKET = st.from_regex(r"[a-z0-9][a-z0-9-]{1,40}[a-z0-9]", fullmatch=True).filter(lambda b: "--" not in b)
KEY = st.lists(st.from_regex(r"[A-Za-z0-9_.=-]{1,12}", fullmatch=True).filter(lambda p: p not in (".", "..")),
               max_size=4).map("/".join)


@given(scheme=st.sampled_from(["s3", "gs", "az", "abfs"]), bucket=BUCKET, key=KEY)
def test_every_well_formed_uri_round_trips(scheme, bucket, key):
    uri = parse_uri(f"{scheme}://{bucket}/{key}")
    assert (uri.scheme, uri.bucket, uri.key) == (scheme, bucket, key)
    assert parse_uri(str(uri)) == uri
    assert uri.child("a", "b/").key == "/".join(p for p in (key, "a", "b") if p)


@given(st.text(max_size=60))
def test_any_text_is_parsed_or_refused_with_a_message(text):
    try:
        parse_uri(text)
    except BadURI as exc:
        assert str(exc)


def test_missing_credentials_name_the_closest_way():
    s3 = parse_uri("s3://bkt/x")
    assert missing_credentials(s3, {}) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert missing_credentials(s3, {"AWS_ACCESS_KEY_ID": "k"}) == ["AWS_SECRET_ACCESS_KEY"]
    assert missing_credentials(s3, {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}) == []
    assert missing_credentials(parse_uri("gs://bkt/x"), {}) == ["GOOGLE_APPLICATION_CREDENTIALS"]
    assert missing_credentials(parse_uri("az://cont/x"), {}) == ["AZURE_STORAGE_CONNECTION_STRING"]
    assert missing_credentials(parse_uri("az://cont/x"), {"AZURE_STORAGE_ACCOUNT_NAME": "a"}) == ["AZURE_STORAGE_ACCOUNT_KEY"]
    assert missing_credentials(parse_uri("abfs://cont@acct.dfs.core.windows.net/x"),
                               {"AZURE_STORAGE_SAS_TOKEN": "t"}) == []
