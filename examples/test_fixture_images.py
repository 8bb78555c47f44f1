"""Images of your own: fixtures_images/NAME/Containerfile, diff, commit, save and load.

`webapp` is busybox with an app layer; `pytool` is the host's OS with a Python tool that a
RUN step installed with pip. Both are built on first use and cached by content.
"""
import pytest


@pytest.mark.sandbox(image="webapp")
def test_a_busybox_image_with_an_app_layer(nsbox):
    server = nsbox.spawn("serve")  # the start script the Containerfile copied in
    page = nsbox.run("for i in $(seq 100); do wget -qO- http://127.0.0.1:8080/ && exit; "
                     "sleep 0.05; done; exit 1", check=True, timeout=10)
    assert "hello from a pytest-nsbox fixtures image" in page.stdout
    assert nsbox.run("pwd; stat -c %U /srv/www/index.html").stdout == "/srv/www\nweb\n"
    server.kill()


@pytest.mark.sandbox(image="pytool")
def test_a_host_image_with_a_python_tool_installed_by_run(nsbox):
    assert nsbox.run("greet tests", check=True).stdout == "hello, tests\n"
    assert nsbox.run("greet").stdout == "hello, nsbox\n"  # ENV GREET_DEFAULT=nsbox


@pytest.mark.sandbox(image="webapp")
def test_diff_is_what_docker_diff_says(nsbox):
    nsbox.run("touch /tmp/a; rm /etc/passwd; echo x >> /etc/group", check=True)
    assert [str(change) for change in nsbox.diff()] == [
        "C /etc", "C /etc/group", "D /etc/passwd", "C /tmp", "A /tmp/a"]


def test_commit_save_and_load(nsbox_factory, nsbox_images, tmp_path):
    box = nsbox_factory(image="webapp")
    box.run("echo changed > /srv/www/index.html && rm /usr/local/bin/serve", check=True)
    image = box.commit(tag="webapp:changed")
    assert image.layers[:-1] == nsbox_images.get("webapp").layers

    image.save(tmp_path / "layout")                           # an OCI layout
    image.save(tmp_path / "image.tar", format="docker-archive")  # what `docker load` reads
    loaded = nsbox_images.load(str(tmp_path / "image.tar"))
    again = nsbox_factory(image=loaded.id)
    assert again.read_text("/srv/www/index.html") == "changed\n"
    assert not again.exists("/usr/local/bin/serve")
    assert nsbox_factory(image=f"oci:{tmp_path / 'layout'}").read_text(
        "/srv/www/index.html") == "changed\n"


def test_build_a_containerfile_from_anywhere(nsbox_images, nsbox_factory, tmp_path):
    folder = tmp_path / "webapp-extra"  # the image is named after its folder
    folder.mkdir()
    (folder / "Containerfile").write_text("FROM webapp\nRUN echo extra > /extra\n")
    image = nsbox_images.build(folder)
    assert image.ref == "webapp-extra"
    assert nsbox_factory(image=image.id).read_text("/extra") == "extra\n"
