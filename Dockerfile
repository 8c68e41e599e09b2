# birdray on the official Ray GPU image, for KubeRay (cluster/kuberay/) or as the cluster
# launcher's docker.image. See cluster/README.md, "The container image".
#
# The base image is pinned by digest, never by a tag alone (a tag can be re-pushed): pass it in,
#
#   DIGEST=$(docker buildx imagetools inspect rayproject/ray:2.60.0-py311-gpu --format '{{.Manifest.Digest}}')
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu@$DIGEST \
#       -t registry.example.com/birdray/birdray:0.1.0-ray2.60.0-py311-gpu .
#
# and the build refuses anything that is not rayproject/ray:2.60.0-py311-gpu@sha256:<digest>.
# Every pip install is held to .ci/constraints.txt, the versions CI tested (Ray included, so Ray
# is never reinstalled); the build fails if the installed Ray differs from the pin in
# pyproject.toml (tests/test_cluster_configs.py checks all three agree).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG RAY_VERSION=2.60.0
RUN case "${BASE_IMAGE#docker.io/}" in \
      "rayproject/ray:${RAY_VERSION}-py311-gpu@sha256:"????????????????????????????????????????????????????????????????) ;; \
      *) echo "BASE_IMAGE must be rayproject/ray:${RAY_VERSION}-py311-gpu@sha256:<64 hex digits>, got '${BASE_IMAGE}' (see the top of this Dockerfile)" >&2; exit 1 ;; \
    esac
LABEL org.opencontainers.image.base.name="${BASE_IMAGE}"

# The image runs as user "ray"; create the folder as that user so pip can build in it.
RUN mkdir -p /home/ray/birdray
WORKDIR /home/ray/birdray

# Dependencies first, in their own layer: code edits do not re-download torch.
COPY --chown=ray:users pyproject.toml ./
COPY --chown=ray:users .ci/constraints.txt ./constraints.txt
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt "ray[train,tune,serve,data]==${RAY_VERSION}" -r /tmp/requirements.txt

# The package itself with its recipes (no dependency resolution left to do), plus the entry
# scripts, which RayJob entrypoints call as /home/ray/birdray/jobs/<job>.py.
COPY --chown=ray:users birdray ./birdray
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && rm -rf build birdray.egg-info \
    && python -c "import ray, birdray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

ENV RAY_TRAIN_V2_ENABLED=1
