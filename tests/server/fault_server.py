"""A test server whose backend misbehaves on demand: ``python fault_server.py FAULT_DIR [serve options]``.

Same app and serving code as ``postemb serve`` (model "base", onnxruntime), with the backend's
``embed`` wrapped: while ``FAULT_DIR/fail`` exists every batch raises; while ``FAULT_DIR/slow``
exists every batch first sleeps that file's number of seconds; while ``FAULT_DIR/hold``
exists every batch waits (polling every 10 ms, 60 s at most) until the file is removed, and
``FAULT_DIR/held`` exists while a batch waits (the test's barrier, instead of a sleep). A ``fail`` file holding a word
fails only the batches with a post that starts with that word.
"""
import argparse
import sys
import time
from pathlib import Path

from postemb_rt.commands.serve import config_from_args, register, serve_app
from postemb_rt.serving.routes import create_app


class InjectedFault(RuntimeError):
    pass


def _starts_with(input_ids, prefix) -> bool:
    n = len(prefix)
    return any(list(row[:n]) == prefix for row in input_ids)


def faulty_loader(cfg, fault_dir: Path):
    def load():
        from postemb_rt import Encoder

        enc = Encoder.from_pretrained(cfg.model, backend=cfg.backend, device="cpu")
        embed = enc.backend.embed
        cls = enc.tokenizer([""]).ids[0][:1]

        def flaky_embed(input_ids, attention_mask, normalize=True):
            hold = fault_dir / "hold"
            if hold.exists():
                (fault_dir / "held").touch()
                deadline = time.monotonic() + 60
                while hold.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                (fault_dir / "held").unlink(missing_ok=True)
            slow = fault_dir / "slow"
            if slow.exists():
                time.sleep(float(slow.read_text() or "0.5"))
            fail = fault_dir / "fail"
            word = fail.read_text().strip() if fail.exists() else None
            if word is not None and (not word or _starts_with(input_ids, cls + enc.tokenizer([word]).ids[0][1:-1])):
                raise InjectedFault(f"injected backend failure on a batch of {len(input_ids)} posts")
            return embed(input_ids, attention_mask, normalize=normalize)

        enc.backend.embed = flaky_embed
        return enc

    return load


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    fault_dir = Path(sys.argv[1])
    args = parser.parse_args(["serve", "--model", "base", "--backend", "onnxruntime", "--precision", "fp32",
                              "--port", "0", *sys.argv[2:]])
    args.verbose = False
    cfg = config_from_args(args)
    app = create_app(cfg, load_encoder=faulty_loader(cfg, fault_dir))
    return serve_app(app, args.host, args.port, cfg.drain_timeout_s, what="fault-injecting test server")


if __name__ == "__main__":
    sys.exit(main())
