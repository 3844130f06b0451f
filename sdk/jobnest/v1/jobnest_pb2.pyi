from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobSpec(_message.Message):
    __slots__ = ("name", "argv", "env", "cwd", "image", "cpu", "memory", "priority", "no_reuse", "executor", "timeout", "cache_version", "labels", "driver", "driver_pid", "driver_host", "program_archive", "program", "when", "retries", "memory_on_oom", "inputs", "mount_cwd")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NO_REUSE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_PID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_HOST_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ON_OOM_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MOUNT_CWD_FIELD_NUMBER: _ClassVar[int]
    name: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    image: str
    cpu: float
    memory: int
    priority: int
    no_reuse: bool
    executor: str
    timeout: float
    cache_version: str
    labels: _containers.ScalarMap[str, str]
    driver: bool
    driver_pid: int
    driver_host: str
    program_archive: bytes
    program: str
    when: str
    retries: int
    memory_on_oom: float
    inputs: _containers.ScalarMap[str, str]
    mount_cwd: bool
    def __init__(self, name: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., image: _Optional[str] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ..., priority: _Optional[int] = ..., no_reuse: _Optional[bool] = ..., executor: _Optional[str] = ..., timeout: _Optional[float] = ..., cache_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., driver: _Optional[bool] = ..., driver_pid: _Optional[int] = ..., driver_host: _Optional[str] = ..., program_archive: _Optional[bytes] = ..., program: _Optional[str] = ..., when: _Optional[str] = ..., retries: _Optional[int] = ..., memory_on_oom: _Optional[float] = ..., inputs: _Optional[_Mapping[str, str]] = ..., mount_cwd: _Optional[bool] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("uuid", "name", "owner", "spawned_by_job_uuid", "state", "reason", "run_uuid", "reused", "run_origin_job_uuid", "exit_code", "has_exit_code", "cpu_millis", "memory", "created_at", "started_at", "finished_at", "node", "executor", "cpu_enforced", "signature", "output", "spec", "run_state", "output_dir", "attempts")
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SPAWNED_BY_JOB_UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_UUID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    RUN_ORIGIN_JOB_UUID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    CPU_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name: str
    owner: str
    spawned_by_job_uuid: str
    state: str
    reason: str
    run_uuid: str
    reused: bool
    run_origin_job_uuid: str
    exit_code: int
    has_exit_code: bool
    cpu_millis: int
    memory: int
    created_at: float
    started_at: float
    finished_at: float
    node: str
    executor: str
    cpu_enforced: bool
    signature: str
    output: str
    spec: JobSpec
    run_state: str
    output_dir: str
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    def __init__(self, uuid: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., spawned_by_job_uuid: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., run_uuid: _Optional[str] = ..., reused: _Optional[bool] = ..., run_origin_job_uuid: _Optional[str] = ..., exit_code: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., cpu_millis: _Optional[int] = ..., memory: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., node: _Optional[str] = ..., executor: _Optional[str] = ..., cpu_enforced: _Optional[bool] = ..., signature: _Optional[str] = ..., output: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., run_state: _Optional[str] = ..., output_dir: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("attempt", "has_exit_code", "exit_code", "reason", "memory", "node", "started_at", "finished_at")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    has_exit_code: bool
    exit_code: int
    reason: str
    memory: int
    node: str
    started_at: float
    finished_at: float
    def __init__(self, attempt: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., memory: _Optional[int] = ..., node: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("request_id", "jobs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    jobs: _containers.RepeatedCompositeFieldContainer[JobSpec]
    def __init__(self, request_id: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[JobSpec, _Mapping]]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("jobs", "driver_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    driver_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., driver_token: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("subtree", "parent", "states", "roots", "include_reused", "limit", "name", "newest_first")
    SUBTREE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REUSED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    subtree: str
    parent: str
    states: _containers.RepeatedScalarFieldContainer[str]
    roots: bool
    include_reused: bool
    limit: int
    name: str
    newest_first: bool
    def __init__(self, subtree: _Optional[str] = ..., parent: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., roots: _Optional[bool] = ..., include_reused: _Optional[bool] = ..., limit: _Optional[int] = ..., name: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListChunk(_message.Message):
    __slots__ = ("uuid", "name", "owner", "spawned_by_job_uuid", "state", "reason", "run_uuid", "reused", "run_origin_job_uuid", "exit_code", "has_exit_code", "cpu_millis", "memory", "created_at", "started_at", "finished_at", "node", "executor", "cpu_enforced", "output", "run_state", "output_dir")
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SPAWNED_BY_JOB_UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_UUID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    RUN_ORIGIN_JOB_UUID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    CPU_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    uuid: _containers.RepeatedScalarFieldContainer[str]
    name: _containers.RepeatedScalarFieldContainer[str]
    owner: _containers.RepeatedScalarFieldContainer[str]
    spawned_by_job_uuid: _containers.RepeatedScalarFieldContainer[str]
    state: _containers.RepeatedScalarFieldContainer[str]
    reason: _containers.RepeatedScalarFieldContainer[str]
    run_uuid: _containers.RepeatedScalarFieldContainer[str]
    reused: _containers.RepeatedScalarFieldContainer[bool]
    run_origin_job_uuid: _containers.RepeatedScalarFieldContainer[str]
    exit_code: _containers.RepeatedScalarFieldContainer[int]
    has_exit_code: _containers.RepeatedScalarFieldContainer[bool]
    cpu_millis: _containers.RepeatedScalarFieldContainer[int]
    memory: _containers.RepeatedScalarFieldContainer[int]
    created_at: _containers.RepeatedScalarFieldContainer[float]
    started_at: _containers.RepeatedScalarFieldContainer[float]
    finished_at: _containers.RepeatedScalarFieldContainer[float]
    node: _containers.RepeatedScalarFieldContainer[str]
    executor: _containers.RepeatedScalarFieldContainer[str]
    cpu_enforced: _containers.RepeatedScalarFieldContainer[bool]
    output: _containers.RepeatedScalarFieldContainer[str]
    run_state: _containers.RepeatedScalarFieldContainer[str]
    output_dir: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uuid: _Optional[_Iterable[str]] = ..., name: _Optional[_Iterable[str]] = ..., owner: _Optional[_Iterable[str]] = ..., spawned_by_job_uuid: _Optional[_Iterable[str]] = ..., state: _Optional[_Iterable[str]] = ..., reason: _Optional[_Iterable[str]] = ..., run_uuid: _Optional[_Iterable[str]] = ..., reused: _Optional[_Iterable[bool]] = ..., run_origin_job_uuid: _Optional[_Iterable[str]] = ..., exit_code: _Optional[_Iterable[int]] = ..., has_exit_code: _Optional[_Iterable[bool]] = ..., cpu_millis: _Optional[_Iterable[int]] = ..., memory: _Optional[_Iterable[int]] = ..., created_at: _Optional[_Iterable[float]] = ..., started_at: _Optional[_Iterable[float]] = ..., finished_at: _Optional[_Iterable[float]] = ..., node: _Optional[_Iterable[str]] = ..., executor: _Optional[_Iterable[str]] = ..., cpu_enforced: _Optional[_Iterable[bool]] = ..., output: _Optional[_Iterable[str]] = ..., run_state: _Optional[_Iterable[str]] = ..., output_dir: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("uuids", "subtree", "subtrees")
    UUIDS_FIELD_NUMBER: _ClassVar[int]
    SUBTREE_FIELD_NUMBER: _ClassVar[int]
    SUBTREES_FIELD_NUMBER: _ClassVar[int]
    uuids: _containers.RepeatedScalarFieldContainer[str]
    subtree: str
    subtrees: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uuids: _Optional[_Iterable[str]] = ..., subtree: _Optional[str] = ..., subtrees: _Optional[_Iterable[str]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("uuid", "state", "reason", "exit_code", "has_exit_code", "initial", "spawned_by_job_uuid")
    UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    SPAWNED_BY_JOB_UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    state: str
    reason: str
    exit_code: int
    has_exit_code: bool
    initial: bool
    spawned_by_job_uuid: str
    def __init__(self, uuid: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., initial: _Optional[bool] = ..., spawned_by_job_uuid: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("digest", "size", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("digest", "manifest")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    manifest: str
    def __init__(self, digest: _Optional[str] = ..., manifest: _Optional[str] = ...) -> None: ...

class BlobRefs(_message.Message):
    __slots__ = ("digests", "size")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    size: int
    def __init__(self, digests: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ...) -> None: ...

class ManifestEntry(_message.Message):
    __slots__ = ("path", "digest", "size", "executable", "link")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: str
    size: int
    executable: bool
    link: str
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., executable: _Optional[bool] = ..., link: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("entries", "file", "digest")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ManifestEntry]
    file: str
    digest: str
    def __init__(self, entries: _Optional[_Iterable[_Union[ManifestEntry, _Mapping]]] = ..., file: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("uuid", "reason")
    UUID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    reason: str
    def __init__(self, uuid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cancelled: _Optional[_Iterable[str]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("uuid", "follow", "stream", "offset", "limit")
    UUID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    follow: bool
    stream: str
    offset: int
    limit: int
    def __init__(self, uuid: _Optional[str] = ..., follow: _Optional[bool] = ..., stream: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stream", "data", "offset")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stream: str
    data: bytes
    offset: int
    def __init__(self, stream: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class WhyRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class SignaturePart(_message.Message):
    __slots__ = ("name", "hash", "compared_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    COMPARED_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    compared_hash: str
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., compared_hash: _Optional[str] = ...) -> None: ...

class WhyResponse(_message.Message):
    __slots__ = ("uuid", "reused", "run_uuid", "explanation", "compared_run_uuid", "parts", "differing")
    UUID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    RUN_UUID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    COMPARED_RUN_UUID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    DIFFERING_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    reused: bool
    run_uuid: str
    explanation: str
    compared_run_uuid: str
    parts: _containers.RepeatedCompositeFieldContainer[SignaturePart]
    differing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uuid: _Optional[str] = ..., reused: _Optional[bool] = ..., run_uuid: _Optional[str] = ..., explanation: _Optional[str] = ..., compared_run_uuid: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[SignaturePart, _Mapping]]] = ..., differing: _Optional[_Iterable[str]] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("run_uuid",)
    RUN_UUID_FIELD_NUMBER: _ClassVar[int]
    run_uuid: str
    def __init__(self, run_uuid: _Optional[str] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: float
    def __init__(self, lease: _Optional[float] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "expires_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    expires_in: float
    def __init__(self, name: _Optional[str] = ..., expires_in: _Optional[float] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "created_at", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at: float
    expires_at: float
    def __init__(self, name: _Optional[str] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "pid", "store", "runs", "nodes", "disk")
    class RunsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DiskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    store: str
    runs: _containers.ScalarMap[str, int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    disk: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., store: _Optional[str] = ..., runs: _Optional[_Mapping[str, int]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., disk: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("uuid", "unpin")
    UUID_FIELD_NUMBER: _ClassVar[int]
    UNPIN_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    unpin: bool
    def __init__(self, uuid: _Optional[str] = ..., unpin: _Optional[bool] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("older_than", "dry_run")
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    older_than: float
    dry_run: bool
    def __init__(self, older_than: _Optional[float] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("jobs", "runs", "data", "blobs", "programs", "bytes")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    jobs: int
    runs: int
    data: int
    blobs: int
    programs: int
    bytes: int
    def __init__(self, jobs: _Optional[int] = ..., runs: _Optional[int] = ..., data: _Optional[int] = ..., blobs: _Optional[int] = ..., programs: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "cpu_millis", "memory", "cpu_used", "memory_used", "cpu_enforced")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPU_USED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    CPU_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    name: str
    cpu_millis: int
    memory: int
    cpu_used: int
    memory_used: int
    cpu_enforced: bool
    def __init__(self, name: _Optional[str] = ..., cpu_millis: _Optional[int] = ..., memory: _Optional[int] = ..., cpu_used: _Optional[int] = ..., memory_used: _Optional[int] = ..., cpu_enforced: _Optional[bool] = ...) -> None: ...
