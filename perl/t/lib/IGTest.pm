package IGTest;
# Shared helpers of the plugin tests: the library and binary under test, openqa.ini files, the
# Mojolicious::Lite test app (t/lib/incident-gate-app.pl), the simulators, and waiting.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

use Exporter 'import';
use File::Temp 'tempdir';
use FindBin;
use IO::Select;
use Mojo::File 'path';
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;
use Test::Mojo;
use Time::HiRes qw(time sleep);

# the plugin keeps what the worker processes of an instance share below TMPDIR: this test's own
$ENV{TMPDIR} = tempdir(CLEANUP => 1);

our @EXPORT_OK = qw(library bin app_script write_ini new_app log_lines emit emit_args reset_events
  start_sim wait_for tempdir unique OPERATOR);

# Request headers of an openQA operator for the stand-in's api_ensure_operator routes.
use constant OPERATOR => {'X-API-Key' => 'IGTEST-OPERATOR'};

my $root = path($FindBin::Bin)->dirname->dirname;    # perl/t -> the repository

sub library () {
    my $lib = $ENV{IG_LIBRARY} // "$root/target/debug/libincident_gate.so";
    die "the library under test $lib does not exist (build it, or set IG_LIBRARY)\n" unless -e $lib;
    return $lib;
}

sub bin () {
    my $bin = $ENV{IG_BIN} // "$root/target/debug/incident-gate";
    die "the binary $bin does not exist (build it, or set IG_BIN)\n" unless -x $bin;
    return $bin;
}

sub app_script () { "$FindBin::Bin/lib/incident-gate-app.pl" }

sub unique () { state $n = 0; join '-', 'igtest', $$, time =~ s/\.//r, ++$n }

# An openqa.ini in a new temporary directory; sections as {name => {key => value}} (insertion
# order does not matter to openQA); a string is written as is (to test broken files).
sub write_ini ($sections) {
    my $dir = tempdir(CLEANUP => 1);
    my $text = ref $sections ? '' : $sections;
    for my $name (ref $sections ? sort keys %$sections : ()) {
        $text .= "[$name]\n" . join('', map { "$_ = $sections->{$name}{$_}\n" } sort keys %{$sections->{$name}}) . "\n";
    }
    my $file = "$dir/openqa.ini";
    open my $fh, '>', $file or die "$file: $!";
    print $fh $text;
    close $fh;
    return $file;
}

# A Test::Mojo on the Lite test app configured by that openqa.ini (undef: no openqa.ini at all).
sub new_app ($ini) {
    reset_events();
    local $ENV{IG_TEST_OPENQA_INI} = $ini // '';
    my $t = Test::Mojo->new(path(app_script()));
    $t->get_ok('/ping')->status_is(200);    # runs the event loop once: the plugin subscribes
    return $t;
}

# What the app logged, as "[level] message" lines.
sub log_lines ($t) { @{$t->app->defaults->{ig_test_log}} }

sub reset_events () {
    require OpenQA::Events;
    OpenQA::Events->singleton->unsubscribe($_) for keys %{OpenQA::Events->singleton->{events} // {}};
}

# The arguments openQA gives its events: [$user_id, $connection_id, $event_name, $data].
sub emit_args ($name, $data) { [2, 'c' . int(rand 1e9), $name, $data] }

sub emit ($name, $data) {
    require OpenQA::Events;
    OpenQA::Events->singleton->emit($name, emit_args($name, $data));
}

# Polls $cond (running the event loop meanwhile) until it is true or $timeout passes.
sub wait_for ($cond, $timeout = 30) {
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        Mojo::IOLoop->timer(0.05 => sub { Mojo::IOLoop->stop });
        Mojo::IOLoop->start;
    }
    return undef;
}

# `incident-gate sim`: the openQA and OBS simulators, stopped when the returned object goes.
# @args: further options of `incident-gate sim` (--gitea: also the Gitea simulator).
sub start_sim (@args) {
    my $bin = bin();
    pipe(my $child_in, my $to_child) or die "pipe: $!";
    pipe(my $from_child, my $child_out) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<&', $child_in or die;
        open STDOUT, '>&', $child_out or die;
        exec $bin, 'sim', @args or die "exec $bin: $!";
    }
    close $child_in;
    close $child_out;
    my $line = '';
    my $deadline = time + 30;
    while ($line !~ /\n/ && time < $deadline) {
        IO::Select->new($from_child)->can_read($deadline - time) or last;
        sysread($from_child, $line, 4096, length $line) or last;
    }
    my $info = eval { decode_json($line) };
    unless ($info && $info->{openqa} && $info->{obs}) {
        kill TERM => $pid;
        waitpid $pid, 0;
        die "`$bin sim` did not print its URLs: '$line'\n";
    }
    return bless {%$info, pid => $pid, owner => $$, stdin => $to_child, stdout => $from_child}, 'IGTest::Sim';
}

package IGTest::Sim;
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';
use Mojo::JSON qw(decode_json encode_json);

sub ua ($self) { $self->{ua} //= Mojo::UserAgent->new(max_redirects => 0, request_timeout => 20) }

# openQA API calls answer the decoded JSON; anything but 200 dies with the response.
sub openqa ($self, $method, $path, $form = undef) {
    my $tx = $self->ua->build_tx($method => "$self->{openqa}$path" => {Accept => 'application/json'},
        $form ? (form => $form) : ());
    $tx = $self->ua->start($tx);
    my $res = $tx->result;
    die "openQA sim: $method $path: " . $res->code . ' ' . $res->body . "\n" unless $res->code == 200;
    return $res->json;
}

sub create_group ($self, $name) { $self->openqa(POST => '/api/v1/job_groups', {name => $name})->{id} }

# Incident jobs as openQA's maintenance scheduling creates them; answers their ids.
sub create_incident_jobs ($self, %o) {
    my @ids;
    for my $test (@{$o{tests}}) {
        push @ids, $self->openqa(
            POST => '/api/v1/jobs',
            {
                DISTRI => 'sle', VERSION => '15-SP6', FLAVOR => 'Server-DVD-Incidents', ARCH => $o{arch} // 'x86_64',
                MACHINE => '64bit', TEST => $test, BUILD => ":$o{incident}:openssl", INCIDENT_ID => $o{incident},
                RRID => "SUSE:Maintenance:$o{incident}:$o{request}", REPOHASH => 'abc123', _GROUP_ID => $o{group},
            })->{id};
    }
    return @ids;
}

# API requests the openQA simulator received so far.
sub requests ($self) { $self->ua->get("$self->{openqa}/_sim/requests")->result->json('/requests') }

# While held, the openQA simulator counts each API request and answers it only once released.
sub hold ($self, $held) {
    my $res = $self->ua->put("$self->{openqa}/_sim/hold" => json => {hold => $held ? \1 : \0})->result;
    die "openQA sim: PUT /_sim/hold: " . $res->code . ' ' . $res->body . "\n" unless $res->code == 200;
}

sub set_done ($self, $id, $result = 'passed') {
    $self->openqa(POST => "/api/v1/jobs/$id/set_done", {result => $result});
}

sub obs_url ($self, $path) {
    my $url = Mojo::URL->new("$self->{obs}$path");
    $url->userinfo("$self->{obs_user}:$self->{obs_password}") if defined $self->{obs_user};
    return $url;
}

# A maintenance release request in review, waiting for qam-openqa (the simulator's control route).
sub create_release_request ($self, $id) {
    my $spec = {state => 'review', action_type => 'maintenance_release',
        reviews => [{by_group => 'qam-openqa', state => 'new'}]};
    my $res = $self->ua->put("$self->{obs}/_sim/requests/$id" => json => $spec)->result;
    die "OBS sim: PUT /_sim/requests/$id: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
}

# The request as OBS XML (Mojo::DOM).
sub request ($self, $id) {
    my $res = $self->ua->get($self->obs_url("/request/$id"))->result;
    die "OBS sim: GET /request/$id: " . $res->code . ' ' . $res->body . "\n" unless $res->code == 200;
    return $res->dom;
}

sub DESTROY ($self) {
    return unless $self->{owner} == $$ && $self->{pid};
    close $self->{stdin};
    kill TERM => $self->{pid};
    waitpid $self->{pid}, 0;
}

1;
