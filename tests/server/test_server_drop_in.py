"""Drop-in details a client of text-embeddings-inference or OpenAI trips on: what each route says when a
request is meant for another route, checked on the shared ``main_server``."""
import pytest

from tests.server.conftest import require_serve_extra

httpx = require_serve_extra()

IDS = [101, 7592, 102]  # "[CLS] hello [SEP]": token ids, which only /embed (and /, /invocations) take, as TEI


@pytest.mark.parametrize("path, body, name", [
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": [IDS]}}, "inputs.sentences[0]"),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": IDS}}, "inputs.sentences[0]"),
    ("/tokenize", {"inputs": [IDS]}, "inputs[0]"),
    ("/embed_full", {"inputs": [IDS]}, "inputs[0]"),
])
def test_token_ids_sent_to_a_text_route_are_told_the_route_that_takes_them(client, path, body, name):
    """Token ids on a route that takes text: the error names the item and POST /embed, not the OpenAI
    client's tokenizer nor LangChain's OpenAIEmbeddings, which the request has nothing to do with."""
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text[:300]
    message = r.json()["error"]
    message = message if isinstance(message, str) else message["message"]
    assert f"`{name}` must be a string" in message and "POST /embed" in message, message
    assert "OpenAI" not in message and "LangChain" not in message, message


def test_token_ids_on_the_openai_route_still_get_the_openai_hint(client):
    r = client.post("/v1/embeddings", json={"input": [IDS]})
    assert r.status_code == 400 and "check_embedding_ctx_length=False" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_openai_client_default_never_decodes_quantized_rows_as_float32(main_server, server_encoder, kind):
    """The openai client asks for base64 unless told otherwise, and decodes each base64 row as float32:
    quantized rows in base64 (their raw bytes) became garbage floats (a 384-d int8 row: 96 numbers, no
    error). The combination is a 400 naming the fix; with encoding_format "float" the rows are the ints."""
    import numpy as np
    import openai

    from tests.server.conftest import API_KEY

    c = openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        c.embeddings.create(model="m", input=["a post"], extra_body={"embedding_type": kind})
    assert refused.value.param == "encoding_format" and 'encoding_format="float"' in refused.value.message
    r = c.embeddings.create(model="m", input=["a post"], encoding_format="float", extra_body={"embedding_type": kind})
    want = server_encoder.encode(["a post"], precision="ubinary" if kind == "binary" else kind)  # binary = ubinary here
    np.testing.assert_array_equal(r.data[0].embedding, want[0])


def test_a_tokenize_request_past_max_input_chars_is_not_told_to_send_truncate_which_tokenize_lacks(client):
    from tests.server.conftest import LIMITS

    text = "word " * (LIMITS["max_input_chars"] // 5 + 1)
    r = client.post("/tokenize", json={"inputs": text, "truncate": True})  # TEI's /tokenize has no `truncate`
    assert r.status_code == 413 and r.json()["error_type"] == "Validation", r.text[:300]
    message = r.json()["error"]
    assert "max_input_chars" in message and "--max-input-chars" in message and "truncate" not in message, message


@pytest.mark.parametrize("path, body", [("/v1/embeddings", {"input": [["a post", "another"]]}),
                                        ("/tokenize", {"inputs": [["a post"]]})])
def test_a_nested_list_of_strings_is_not_called_token_ids(client, path, body):
    r = client.post(path, json=body)
    message = r.json()["error"]
    message = message if isinstance(message, str) else message["message"]
    assert r.status_code in (400, 422) and "must be a string. Given: array" in message, r.text[:300]
    assert "oken id" not in message and "oken-id" not in message, message
