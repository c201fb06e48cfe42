"""`python -m minigrm.serve`: the GRM as a reward service that RL frameworks and OpenAI clients call.

    python -m minigrm.serve --model GRM_DIR [--meta-rm DIR] [--host 127.0.0.1] [--port 8000]

One engine runs continuously (service.EngineLoop): requests from every client are admitted into
the running batch between steps, and the k judgments of one request share the prompt's prefix
blocks. Endpoints:
  GET  /health                 {"status": "ok", "model": ...}
  POST /score                  the native GRM call: {"prompt", "responses", "k", "k_meta", "temperature",
                               "max_tokens", "seed", "return_judgments"} -> scoring.result (voted
                               scores, votes, best, tie, meta, judgments); MetaRM@k when a meta RM is
                               loaded (k_meta defaults to k/2)
  POST /v1/chat/completions    OpenAI-compatible generation with the GRM (messages, n, temperature,
                               top_p, max_tokens, seed, stop): the official client, LiteLLM, verl
  POST /get_reward             OpenRLHF's remote reward model: {"query": [prompt + response], "prompts":
                               [prompt], "labels"} -> {"rewards", "scores", "extra_logs"}; each response
                               is judged alone with the default 1..10 prompt, --k judgments
Reward mapping (/get_reward and integrations.grm_reward): a response's mean voted score s in
1..10 becomes (s - 5.5) / 4.5 in [-1, 1]; a response without any valid judgment gets 0.0 (and
is counted in extra_logs["invalid"]).

Bad input (malformed JSON, missing or mistyped fields, values out of range, a prompt longer than
the context) is answered 400/422 with a message naming the field; the server keeps serving. A
judgment that does not parse is a counted invalid judgment, never an error. SIGTERM: uvicorn
stops accepting, lets in-flight requests finish, the engine loop drains, exit 0. The server binds
to 127.0.0.1 by default and reads or writes no file a client names.
Needs the `serve` extra (FastAPI + uvicorn, as vLLM / SGLang / OpenRLHF's serve_rm use).
"""
import argparse
import asyncio
import time
import uuid
from typing import Literal, Union

from pydantic import BaseModel, Field

from . import cli, grm, scoring
from .meta_rm import load_meta_rm
from .prompts import render_context
from .sampling import SamplingParams
from .service import EngineLoop

MAX_K = 64


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ScoreRequest(BaseModel):
    prompt: Union[str, list[Message]]
    responses: list[str] = Field(min_length=1, max_length=32)
    k: int = Field(8, ge=1, le=MAX_K)
    k_meta: int | None = Field(None, ge=1, le=MAX_K)
    temperature: float = Field(0.5, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=1, le=32768)
    seed: int | None = None
    return_judgments: bool = False


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_K)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    seed: int | None = None
    stop: Union[str, list[str], None] = None


class RewardRequest(BaseModel):
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list | None = None


class GRMServer:
    """What the endpoints share: the engine loop, the tokenizer, the meta RM and the defaults."""

    def __init__(self, engine, tokenizer, name: str, meta_rm=None, k: int = 8, max_tokens: int = 1024):
        self.loop, self.tok, self.name, self.meta = EngineLoop(engine), tokenizer, name, meta_rm
        self.k, self.max_tokens, self.max_len = k, max_tokens, engine.max_model_len
        self._meta_lock = asyncio.Lock()

    def _prompt_ids(self, messages, field: str) -> list[int]:
        ids = self.tok.encode(self.tok.apply_chat_template(messages, add_generation_prompt=True))
        if len(ids) >= self.max_len:
            raise BadInput(field, f"{len(ids)} tokens with the template: longer than the context ({self.max_len})")
        return ids

    async def score(self, req: scoring.Request) -> dict:
        orders, messages = scoring.plan(req)
        prompts = [self._prompt_ids(m, "prompt/responses") for m in messages]
        params = SamplingParams(temperature=req.temperature, max_tokens=req.max_tokens)
        seeds = [grm.stream_seed(req.item, j, req.seed) for j in range(req.k)]
        outs = await asyncio.wrap_future(self.loop.submit(prompts, params, seeds))
        completions = [o[0] for o in outs]
        meta = None
        if self.meta is not None:
            shown = [[req.responses[i] for i in o] for o in orders]
            async with self._meta_lock:  # one meta-RM forward at a time, off the event loop
                meta = await asyncio.to_thread(self.meta.score, [req.prompt] * req.k, shown,
                                               [c.text for c in completions])
            meta = [float("-inf") if m is None else m for m in meta]
            req.k_meta = req.k_meta or scoring.k_meta_for(req.k)
        return scoring.result(req, orders, completions, meta)

    async def chat(self, body: ChatRequest) -> dict:
        messages = [m.model_dump() for m in body.messages]
        try:
            render_context(messages)
        except ValueError as e:
            raise BadInput("messages", str(e)) from None
        ids = self._prompt_ids(messages, "messages")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        params = SamplingParams(n=body.n, temperature=body.temperature, top_p=body.top_p, stop=stop,
                                max_tokens=body.max_completion_tokens or body.max_tokens or self.max_tokens,
                                seed=body.seed)
        seeds = None if body.seed is None else [body.seed]
        (outs,) = await asyncio.wrap_future(self.loop.submit([ids], params, seeds))
        choices = [{"index": j, "message": {"role": "assistant", "content": c.text},
                    "finish_reason": "length" if c.finish_reason == "length" else "stop", "logprobs": None}
                   for j, c in enumerate(outs)]
        completion_tokens = sum(len(c.token_ids) for c in outs)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": body.model or self.name, "choices": choices,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens}}

    async def get_reward(self, body: RewardRequest) -> dict:
        prompts = body.prompts if body.prompts is not None else [""] * len(body.query)
        if len(prompts) != len(body.query):
            raise BadInput("prompts", f"{len(prompts)} prompts for {len(body.query)} queries")
        reqs = []
        for i, (q, p) in enumerate(zip(body.query, prompts)):
            if not q.startswith(p):
                raise BadInput(f"query[{i}]", "does not start with its prompt (query = prompt + response)")
            reqs.append(scoring.Request(p or q, [q[len(p):]], k=self.k, max_tokens=self.max_tokens))
        outs = await asyncio.gather(*(self.score(r) for r in reqs))
        scores = [None if o["scores"] is None else o["scores"][0] for o in outs]
        return {"rewards": [0.0 if s is None else scoring.reward_of(s) for s in scores], "scores": scores,
                "extra_logs": {"invalid": [float(o["scores"] is None) for o in outs],
                               "n_valid": [o["n_valid"] for o in outs]}}


class BadInput(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def create_app(server: GRMServer):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.loop.close()  # after uvicorn has let in-flight requests finish: drain the engine

    app = FastAPI(title="minigrm reward server", lifespan=lifespan)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput):
        return JSONResponse(status_code=400, content={"error": {"message": str(exc), "field": exc.field,
                                                                "type": "invalid_request_error"}})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.name}

    @app.post("/score")
    async def score(body: ScoreRequest):
        prompt = body.prompt if isinstance(body.prompt, str) else [m.model_dump() for m in body.prompt]
        try:
            render_context(prompt)
        except ValueError as e:
            raise BadInput("prompt", str(e)) from None
        if body.k_meta is not None and body.k_meta > body.k:
            raise BadInput("k_meta", f"{body.k_meta} is more than k = {body.k}")
        req = scoring.Request(prompt, body.responses, body.k, body.k_meta, body.temperature, body.max_tokens,
                              body.seed, body.return_judgments)
        return await server.score(req)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        return await server.chat(body)

    @app.post("/get_reward")
    async def get_reward(body: RewardRequest):
        return await server.get_reward(body)

    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=cli.existing_folder, help="the GRM: an HF folder")
    ap.add_argument("--meta-rm", default=None, type=cli.existing_folder, help="a meta RM folder (MetaRM@k)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    ap.add_argument("--port", type=cli.positive_int, default=8000, help="port")
    ap.add_argument("--max-num-seqs", type=cli.positive_int, default=256, help="sequences decoded together")
    cli.add_engine_args(ap)
    ap.add_argument("--max-tokens", type=cli.positive_int, default=1024, help="default max tokens per judgment")
    ap.add_argument("--k", type=cli.positive_int, default=8, help="judgments per response for /get_reward")
    ap.add_argument("--dtype", default=None, type=cli.dtype_name, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", default=None, type=cli.device_name, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--chat-template", default=None, help="chat template family when the folder's is unknown")
    args = ap.parse_args(argv)
    import torch
    import uvicorn

    import minigrm
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = minigrm.load_model(args.model, dtype=dtype, device=device)
    tok = minigrm.load_tokenizer(args.model, chat_template=args.chat_template)
    engine = minigrm.Engine(model, tok, max_num_seqs=args.max_num_seqs, progress=False,
                            **cli.engine_kwargs(args))
    meta = load_meta_rm(args.meta_rm, dtype=dtype, device=device, chat_template=args.chat_template) \
        if args.meta_rm else None
    server = GRMServer(engine, tok, args.model, meta, k=args.k, max_tokens=args.max_tokens)
    serve_until_signal(uvicorn, create_app(server), args.host, args.port)


def serve_until_signal(uvicorn, app, host: str, port: int) -> None:
    """Run uvicorn; SIGTERM / Ctrl-C stop accepting, let in-flight requests finish (uvicorn's
    graceful shutdown, then our lifespan drains the engine loop) and return: exit status 0.
    (uvicorn's own handlers would re-raise the signal after the drain, exiting 143.)"""
    import contextlib
    import signal

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum, frame):
                self.should_exit = True
            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


if __name__ == "__main__":
    main()
