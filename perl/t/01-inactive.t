# A missing section, a missing or broken library and an invalid configuration each give one clear
# error line; the plugin stays inactive (no event subscription, its routes answer 503) and the app
# keeps serving.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library write_ini new_app log_lines emit OPERATOR);
use File::Temp 'tempdir';

my $events = do { require OpenQA::Events; OpenQA::Events->singleton };

sub inactive_ok {
    my ($ini, $why, $name) = @_;
    subtest $name => sub {
        my $t = new_app($ini);
        my @errors = grep {/^\[error\]/} log_lines($t);
        is scalar(@errors), 1, 'exactly one error line' or diag join "\n", log_lines($t);
        like $errors[0], qr/^\[error\] IncidentGate: .*$why.*; the plugin is inactive$/, 'it says what is wrong';
        unlike $errors[0], qr/\n/, 'on one line';
        is scalar @{$events->subscribers('openqa_job_done')}, 1, 'only the test app subscribed to events';
        ok eval { emit(openqa_job_done => {id => 1, result => 'passed', newbuild => undef, reason => undef}); 1 },
          'an event is emitted without trouble'
          or diag $@;
        is scalar @{$t->app->defaults->{ig_test_seen}}, 1, 'and reaches the other subscriber';
        $t->get_ok('/ping')->status_is(200)->content_is('pong');
        $t->get_ok('/api/v1/incident_gate/status')->status_is(503)->json_like('/error' => qr/inactive: .*$why/);
        $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(503)->json_like('/error' => qr/$why/);
        $t->get_ok('/api/v1/incident_gate/incidents/12345')->status_is(503)->json_like('/error' => qr/$why/);
        $t;
    };
}

inactive_ok(undef, qr/no \[incident_gate\] section in openqa\.ini/, 'no openqa.ini');
inactive_ok(write_ini({global => {plugins => 'IncidentGate'}}), qr/no \[incident_gate\] section/, 'no section');

my $dir = tempdir(CLEANUP => 1);
inactive_ok(write_ini({incident_gate => {library => "$dir/nope.so"}}), qr{library \Q$dir\E/nope\.so does not exist},
    'library set to a missing file');
{
    local $ENV{INCIDENT_GATE_LIBRARY};
    no warnings 'once';
    local @OpenQA::WebAPI::Plugin::IncidentGate::LIBRARY_PATHS = ("$dir/lib64/libincident_gate.so");
    inactive_ok(write_ini({incident_gate => {openqa_url => 'http://openqa.example'}}),
        qr{libincident_gate\.so not found \(tried \Q$dir\E/lib64/libincident_gate\.so; set library},
        'no library found on the search path');
}
{ open my $fh, '>', "$dir/garbage.so" or die; print $fh "not a shared object\n" }
inactive_ok(write_ini({incident_gate => {library => "$dir/garbage.so"}}),
    qr{cannot load incident-gate library \Q$dir\E/garbage\.so: .*}, 'library is not a shared object');

my $lib = library();
inactive_ok(write_ini({incident_gate => {library => $lib, concurrency => 'many', obs_password => 'S3CRET-OBS'}}),
    qr/invalid configuration in \[incident_gate\]: config key `concurrency`: expected a whole number \(IG_INVALID_CONFIG\)/,
    'a value of the wrong type');
inactive_ok(write_ini({incident_gate => {library => $lib, opneqa_url => 'http://openqa.example'}}),
    qr/invalid configuration in \[incident_gate\]: .*opneqa_url.*\(IG_INVALID_CONFIG\)/, 'an unknown key');
inactive_ok(write_ini({incident_gate => {library => $lib, review_policy => 'approve-all'}}),
    qr/config key `review_policy`/, 'an unknown review policy');

inactive_ok(write_ini("[incident_gate]\nlibrary = $lib\nsettle_ms = 1\n[global]\n[incident_gate]\nsettle_ms = 2\n"),
    qr/more than one \[incident_gate\] section in .*openqa\.ini/, 'a second [incident_gate] section');
inactive_ok(write_ini("[incident_gate]\nlibrary = $lib\nsettle_ms = 1\nsettle_ms = 2\n"),
    qr/key `settle_ms` appears twice in \[incident_gate\]/, 'a key given twice');

subtest 'no secret in the log' => sub {
    my $t = new_app(write_ini({incident_gate => {library => $lib, concurrency => 'many',
        obs_password => 'S3CRET-OBS', amqp_url => 'amqp://u:S3CRET-MQ@localhost/'}}));
    my @lines = log_lines($t);
    ok scalar @lines, 'something was logged';
    ok !(grep {/S3CRET/} @lines), 'but no secret' or diag join "\n", @lines;
};

subtest 'found through INCIDENT_GATE_LIBRARY, openqa_url defaults to base_url' => sub {
    local $ENV{INCIDENT_GATE_LIBRARY} = $lib;
    my $state = tempdir(CLEANUP => 1);
    my $t = new_app(write_ini({global => {base_url => 'http://openqa.example:9526', plugins => 'IncidentGate'},
        incident_gate => {state_dir => $state, obs_password => 'S3CRET-OBS'}}));
    is_deeply [grep {/^\[error\]/} log_lines($t)], [], 'no error';
    ok((grep {/^\[info\] IncidentGate: libincident_gate \d+\.\d+\.\d+\S* from \Q$lib\E$/} log_lines($t)),
        'the library and its version are logged')
      or diag join "\n", log_lines($t);
    is scalar @{$events->subscribers('openqa_job_done')}, 2, 'the plugin subscribed';
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)
      ->json_is('/config/openqa_url' => 'http://openqa.example:9526')->json_is('/config/state_dir' => $state)
      ->json_is('/config/obs_password' => '<redacted>')->content_unlike(qr/S3CRET/);

    $t = new_app(write_ini({global => {base_url => 'http://openqa.example:9526'},
        incident_gate => {state_dir => $state, openqa_url => 'https://openqa.other'}}));
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)
      ->json_is('/config/openqa_url' => 'https://openqa.other');
};

{
    # openQA hosts without FFI::Platypus: the plugin still compiles, and says what to install
    local @INC = (sub { die "hidden by the test\n" if $_[1] =~ m{^FFI/Platypus}; return }, @INC);
    delete local $INC{'FFI/Platypus.pm'};
    inactive_ok(write_ini({incident_gate => {library => library()}}), qr/FFI::Platypus 2 is not installed/,
        'FFI::Platypus missing');
}

done_testing;
