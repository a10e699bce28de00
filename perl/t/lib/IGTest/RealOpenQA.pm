package IGTest::RealOpenQA;
# A real openQA web UI for the end-to-end suite (scripts/real-openqa: Debian's `openqa`, its own
# database, Fake auth, openQA's AMQP plugin, optionally ours), and its REST API as openQA's clients
# use it: reads unsigned, writes signed with the API key of the Fake-auth admin `Demo`.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

use Digest::SHA 'hmac_sha1_hex';
use FindBin;
use IO::Select;
use Mojo::File qw(path tempfile);
use Mojo::JSON qw(decode_json);
use Mojo::UserAgent;
use Time::HiRes qw(time);

use constant {API_KEY => '1234567890ABCDEF', API_SECRET => '1234567890ABCDEF'};

my $root = path(__FILE__)->realpath->dirname->dirname->dirname->dirname->dirname;    # perl/t/lib/IGTest -> repo

# %o: workers => N (prefork), plugin => 1, ini => {section => {key => value}} appended to
# openqa.ini, exchange, prefix (openQA's AMQP plugin), env => {NAME => value} for openQA's processes,
# gru => 1 (also run openQA's GRU, which runs job-done hooks), root => another checkout of this project.
sub start ($class, %o) {
    my @args = ('--workers', $o{workers} // 0);
    push @args, '--plugin' if $o{plugin};
    push @args, '--no-amqp' if exists $o{amqp} && !$o{amqp};
    push @args, '--gru' if $o{gru};
    push @args, '--amqp-exchange', $o{exchange} if $o{exchange};
    push @args, '--amqp-prefix', $o{prefix} if $o{prefix};
    my $ini;
    if ($o{ini}) {
        $ini = tempfile(SUFFIX => '.ini');
        my $text = '';
        for my $name (sort keys %{$o{ini}}) {
            my $s = $o{ini}{$name};
            $text .= "[$name]\n" . join('', map { "$_ = $s->{$_}\n" } sort keys %$s) . "\n";
        }
        $ini->spurt($text);
        push @args, '--ini', "$ini";
    }
    pipe(my $child_in, my $to_child) or die "pipe: $!";
    pipe(my $from_child, my $child_out) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<&', $child_in or die;
        open STDOUT, '>&', $child_out or die;
        $ENV{$_} = $o{env}{$_} for keys %{$o{env} // {}};
        # root => another checkout: its scripts/real-openqa, which loads its own perl/lib (the bench's before)
        my $from = $o{root} // $root;
        exec "$from/scripts/real-openqa", @args or die "exec scripts/real-openqa: $!";
    }
    close $child_in;
    close $child_out;
    my $line = '';
    my $deadline = time + 120;
    while ($line !~ /\n/ && time < $deadline) {
        IO::Select->new($from_child)->can_read($deadline - time) or last;
        sysread($from_child, $line, 4096, length $line) or last;
    }
    my $info = eval { decode_json($line) };
    unless ($info && $info->{url}) {
        close $to_child;
        waitpid $pid, 0;
        die "scripts/real-openqa did not start openQA: '$line'\n";
    }
    return bless {%$info, script => $pid, owner => $$, stdin => $to_child, ini_file => $ini}, $class;
}

sub url ($self) { $self->{url} }

# The pids of the prefork workers (none for `openqa daemon`).
sub workers ($self) { grep { /^\d+$/ } split /\s+/, `pgrep -P $self->{pid}` }
sub ua ($self) { $self->{ua} //= Mojo::UserAgent->new(max_redirects => 0, request_timeout => 60) }

# A request with openQA's API authentication: HMAC-SHA1 over path+query and the timestamp. The
# parameters go in the body (openQA reads them from there too, and never signs the body).
sub request ($self, $method, $path, $form = undef) {
    my $url = Mojo::URL->new($self->{url} . $path);
    my $ts = time =~ s/\..*//r;
    my %headers = (Accept => 'application/json', 'X-API-Key' => API_KEY, 'X-API-Microtime' => $ts,
        'X-API-Hash' => hmac_sha1_hex($url->path_query . $ts, API_SECRET));
    my $tx = $self->ua->build_tx($method => $url => \%headers, $form ? (form => $form) : ());
    return $self->ua->start($tx)->result;
}

# The decoded answer of a request that must succeed; dies naming the route and openQA's answer.
sub api ($self, $method, $path, $form = undef) {
    my $res = $self->request($method, $path, $form);
    die "openQA: $method $path: " . $res->code . ' ' . $res->body . "\n" unless $res->is_success;
    return $res->json;
}

sub create_group ($self, $name, %o) {
    $self->api(POST => '/api/v1/job_groups', {name => $name, %o})->{id};
}

# A job as openQA's maintenance scheduling creates it (product defaults overridable in %s).
sub create_job ($self, %s) {
    my %job = (DISTRI => 'sle', VERSION => '15-SP6', FLAVOR => 'Server-DVD-Incidents', ARCH => 'x86_64',
        MACHINE => '64bit', %s);
    delete $job{$_} for grep { !defined $job{$_} } keys %job;
    return $self->api(POST => '/api/v1/jobs', \%job)->{id};
}

# What workers do when a job ends (the request that emits openqa_job_done).
sub set_done ($self, $id, $result = 'passed') {
    my $res = $self->request(POST => "/api/v1/jobs/$id/set_done", {result => $result});
    die "openQA: set_done $id: " . $res->code . ' ' . $res->body . "\n" unless $res->code == 200;
    return $res;
}

# Answers the id of the clone.
sub restart ($self, $id) {
    my $json = $self->api(POST => "/api/v1/jobs/$id/restart");
    my ($clone) = map { values %$_ } grep { ref eq 'HASH' } @{$json->{result} // []};
    die "openQA: restart $id gave no clone: " . Mojo::JSON::encode_json($json) . "\n" unless $clone;
    return $clone;
}

# openQA's own scheduling: what `POST /api/v1/isos` creates jobs from. Each answers the new id.
sub _settings (%s) { map { ("settings[$_]" => $s{$_}) } keys %s }
sub create_machine ($self, $name, %s) {
    $self->api(POST => '/api/v1/machines', {name => $name, backend => 'qemu', _settings(%s)})->{id};
}
sub create_test_suite ($self, $name, %s) {
    $self->api(POST => '/api/v1/test_suites', {name => $name, _settings(%s)})->{id};
}
sub create_product ($self, %p) {
    my %s = %{delete $p{settings} // {}};
    $self->api(POST => '/api/v1/products', {%p, _settings(%s)})->{id};
}
# %t: group_id, machine_id, test_suite_id, product_id (openQA 4.6's legacy route; the group must
# not be managed as YAML).
sub create_job_template ($self, %t) { $self->api(POST => '/api/v1/job_templates', {prio => 50, %t})->{id} }

# A scheduled product (`POST /api/v1/isos`): with async => 1 openQA only enqueues the GRU task
# `schedule_iso` and answers its ids; otherwise it creates the jobs within the request.
sub post_iso ($self, %params) { $self->api(POST => '/api/v1/isos', \%params) }
sub scheduled_product ($self, $id) { $self->api(GET => "/api/v1/isos/$id?include_job_ids=1") }

# Runs openQA's GRU once over the tasks enqueued so far (`openqa gru run --oneshot`), with this
# instance's configuration (our plugin loaded in it too, as in a GRU service), then returns.
sub run_gru_once ($self) {
    my $dir = path($self->{config})->dirname;
    my $log = $self->{gru_once_log} = "$dir/gru-oneshot.log";
    local $ENV{OPENQA_CONFIG} = $self->{config};
    local $ENV{OPENQA_BASEDIR} = "$dir/data";
    local $ENV{OPENQA_LOGFILE} = $log;
    local $ENV{PERL5LIB} = "$root/perl/lib" . ($ENV{PERL5LIB} ? ":$ENV{PERL5LIB}" : '');
    system('/usr/share/openqa/script/openqa', 'gru', '-m', 'production', 'run', '--oneshot') == 0
      or die "openqa gru run --oneshot: exit " . ($? >> 8) . "\n";
}

sub cancel ($self, $id) { $self->api(POST => "/api/v1/jobs/$id/cancel") }
sub job ($self, $id) { $self->api(GET => "/api/v1/jobs/$id")->{job} }
sub comment ($self, $job, $text) { $self->api(POST => "/api/v1/jobs/$job/comments", {text => $text})->{id} }
sub delete_comment ($self, $job, $id) { $self->api(DELETE => "/api/v1/jobs/$job/comments/$id") }

# openQA's own log lines (file of the web UI and, with gru, of the GRU).
sub log_lines ($self) {
    map { defined $_ && -e $_ ? split(/\n/, path($_)->slurp) : () } $self->{log}, $self->{stdout}, $self->{gru_once_log};
}

# Lines a healthy instance never writes: errors, and our plugin's warnings.
sub alarming_lines ($self) {
    grep { /\[(error|fatal)\]|IncidentGate.*\[warn\]|\[warn\].*IncidentGate|Internal Server Error|Mojo::Reactor/i }
      $self->log_lines;
}

sub stop ($self) {
    return unless $self->{owner} == $$ && $self->{script};
    close $self->{stdin};
    waitpid delete $self->{script}, 0;
}

sub DESTROY ($self) { $self->stop }

1;
